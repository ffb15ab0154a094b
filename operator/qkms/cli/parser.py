"""The command line's flags: one parser for every command."""

from __future__ import annotations

import argparse
from pathlib import Path

from qkms.config import ClientConfig

DESCRIPTION = ("qkms: create, rotate and use cryptographic keys (classical, post-quantum, "
               "hybrid) from the command line, in standalone mode (serve) or as a Kubernetes "
               "operator.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qkms", description=DESCRIPTION)
    parser.add_argument("--environment",
                        help="dev, staging or prod (QKMS_ENVIRONMENT, default dev): whose "
                             "folder of the data dir commands use")
    parser.add_argument("--provider", help="key provider (KMS_PROVIDER), default LOCAL_DEV")
    parser.add_argument("--data-dir", type=Path,
                        help="data dir (QKMS_DATA_DIR, default .qkms): master.key and a folder "
                             "per environment, as qkms serve writes them")
    parser.add_argument("--master-key-file", type=Path, help="KEK file (QKMS_MASTER_KEY_FILE)")
    parser.add_argument("--actor", default="cli", help="who is acting, for the audit log")
    top = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    top.add_parser("version", help="print the version")
    top.add_parser("algorithms", help="list supported algorithms")
    call_cmd = top.add_parser("call", help="a key operation through the data plane (workloads)")
    call_cmd.add_argument("operation", choices=["sign", "verify", "encrypt", "decrypt", "derive",
                                                "encapsulate", "decapsulate"])
    call_cmd.add_argument("key", help="namespace/name")
    call_cmd.add_argument("--url", default=ClientConfig.from_env().url)
    call_cmd.add_argument("--token-file", type=Path,
                          help="bearer token file (default: QKMS_TOKEN_FILE, else the "
                               "projected /var/run/secrets/qkms/token, else the pod's "
                               "ServiceAccount token; or QKMS_TOKEN)")
    call_cmd.add_argument("--ca-file", type=Path,
                          help="CA bundle for the server's certificate (default: QKMS_CA_FILE, "
                               "else /var/run/secrets/qkms/ca.crt)")
    call_cmd.add_argument("--in", dest="input", default="-")
    call_cmd.add_argument("--out", default="-")
    call_cmd.add_argument("--ciphertext-out", help="ENCAPSULATE: where the KEM ciphertext goes")
    call_cmd.add_argument("--signature", help="VERIFY: signature file")
    call_cmd.add_argument("--context")
    call_cmd.add_argument("--length", type=int)
    call_cmd.add_argument("--encoding", choices=["base64", "raw"], default="base64")
    top.add_parser("providers", help="the capability table: native, envelope or software")
    top.add_parser("demo", help="run the seed's examples on a throwaway embedded store")
    op = top.add_parser("operator", help="run the Kubernetes operator (Kopf)")
    op.add_argument("--standalone", action="store_true",
                    help="no peering: run even if another replica is active")
    op.add_argument("--namespace", action="append",
                    help="serve only these namespaces (default: cluster-wide)")
    op.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                    help="liveness endpoint URL ('' to disable)")
    op.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)  # a data-plane worker's
    crd_cmd = top.add_parser("crds", help="print the CRDs generated from the models")
    crd_cmd.add_argument("--write", type=Path, help="write them into this folder instead")
    pqc = top.add_parser("pqc", help="post-quantum readiness")
    pqc_sub = pqc.add_subparsers(dest="action", required=True, metavar="ACTION")
    pqc_st = pqc_sub.add_parser("status", help="list keys on quantum-vulnerable algorithms")
    pqc_st.add_argument("--manifests", type=Path,
                        help="a manifests folder (default: the cluster in KUBECONFIG)")
    pqc_st.add_argument("--all", action="store_true", help="list every key, not only those")
    serve_cmd = top.add_parser("serve", help="standalone mode: reconcile manifests from a folder")
    serve_cmd.add_argument("--manifests", type=Path,
                           help="folder of KeyPolicy/ManagedKey YAML (default: bundled examples)")
    serve_cmd.add_argument("--out", type=Path,
                           help="projection folder (default DATA_DIR/projections)")
    serve_cmd.add_argument("--poll", type=float, default=1.0, help="seconds between folder checks")
    serve_cmd.add_argument("--once", action="store_true", help="reconcile once and exit")
    serve_cmd.add_argument("--listen", default="127.0.0.1:8443",
                           help="data-plane address ('' disables the API)")
    serve_cmd.add_argument("--tokens", type=Path, help="tokens and grants file (YAML)")
    serve_cmd.add_argument("--tls-cert", type=Path, help="TLS certificate (PEM)")
    serve_cmd.add_argument("--tls-key", type=Path, help="TLS private key (PEM)")
    serve_cmd.add_argument("--tls-client-ca", type=Path, help="CA for mutual TLS")
    serve_cmd.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)  # qkms serve's own
    from qkms.audit import cli as audit_cli

    audit_cli.add_parser(top)
    val = top.add_parser("validate", help="check configuration, policies, master key, store, "
                                          "provider and audit store")
    val.add_argument("--manifests", type=Path, help="also check a folder of policy/key YAML")
    backup_cmd = top.add_parser("backup", help="encrypted backup and restore of the store")
    backup_sub = backup_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, io_flag, help_text in (("create", "--out", "write a backup"),
                                       ("restore", "--in", "rebuild an empty store")):
        b = backup_sub.add_parser(action, help=help_text)
        b.add_argument(io_flag, dest="out" if action == "create" else "input", default="-")
        b.add_argument("--backup-key-file", type=Path,
                       help="the backup key (default DATA_DIR/backup.key, created if missing)")
    keys = top.add_parser("keys", help="manage and use keys in the embedded store")
    sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")

    def key_cmd(name: str, help_text: str, *, io: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("key", help="key name or version key ID")
        if io:
            p.add_argument("--in", dest="input", default="-", help="input file, - for stdin")
            p.add_argument("--out", default="-", help="output file, - for stdout")
            p.add_argument("--encoding", choices=["base64", "raw"], default="base64",
                           help="encoding of binary outputs (and binary inputs)")
        return p

    create = sub.add_parser("create", help="create a key")
    create.add_argument("--usage", required=True)
    create.add_argument("--algorithm", required=True)
    create.add_argument("--owner", required=True)
    create.add_argument("--name")
    create.add_argument("--rotation-schedule")
    create.add_argument("--grace-period")
    imp = sub.add_parser("import", help="import an existing private key (bring your own key)")
    imp.add_argument("--pem", help="PEM private key (password in QKMS_IMPORT_PASSWORD)")
    imp.add_argument("--raw", help="32 raw bytes for AES-256-GCM, ChaCha20-Poly1305, HKDF")
    imp.add_argument("--algorithm")
    imp.add_argument("--usage", required=True)
    imp.add_argument("--owner", required=True)
    imp.add_argument("--name")
    imp.add_argument("--rotation-schedule")
    sub.add_parser("list", help="list keys")
    key_cmd("show", "show a key and its versions")
    public = key_cmd("public", "export public material", io=True)
    public.add_argument("--format", choices=["pem", "jwks", "raw", "ethereum"], default="pem",
                        help="ethereum: the EIP-55 address of a secp256k1 key")
    rotate = key_cmd("rotate", "rotate a key")
    rotate.add_argument("--reason", default="MANUAL")
    rotate.add_argument("--grace-period")
    rotate.add_argument("--immediate", action="store_true")
    rotate.add_argument("--algorithm", help="migrate to another algorithm of the same usage")
    key_cmd("revoke", "revoke a key or version").add_argument("--reason", required=True)
    key_cmd("delete", "schedule deletion").add_argument("--window", default="P30D")
    key_cmd("cancel-deletion", "cancel a scheduled deletion")
    sign = key_cmd("sign", "sign data", io=True)
    verify = key_cmd("verify", "verify a signature (exit 1 if invalid)", io=True)
    verify.add_argument("--signature", required=True, help="signature file")
    for cmd in (sign, verify):  # ECDSA signature options (qkms.signing)
        cmd.add_argument("--format", choices=["der", "raw"],
                         help="ECDSA: DER (default) or raw r||s; verify takes either without it")
        cmd.add_argument("--prehashed", action="store_true",
                         help="ECDSA: the input is a 32-byte digest, signed as given")
    sign.add_argument("--recovery-id", action="store_true",
                      help="secp256k1: append the recovery id (r||s||v, 65 bytes)")
    sign.add_argument("--low-s", action="store_true", help="P-256: normalize s (secp256k1 "
                      "always is)")
    for name in ("encrypt", "decrypt"):
        key_cmd(name, f"{name} data", io=True).add_argument("--context")
    encap = key_cmd("encapsulate", "KEM encapsulate to the key's public key", io=True)
    encap.add_argument("--secret-out", required=True, help="where to write the shared secret")
    key_cmd("decapsulate", "KEM decapsulate a ciphertext", io=True)
    derive = key_cmd("derive", "derive key material (HKDF-SHA256)", io=True)
    derive.add_argument("--context", required=True, help="HKDF info")
    derive.add_argument("--length", type=int, default=32)
    rewrap = sub.add_parser("rewrap", help="re-encrypt every record under a new master key")
    rewrap.add_argument("--new-master-key-file", type=Path,
                        help="file holding the new KEK (generated if absent)")
    return parser
