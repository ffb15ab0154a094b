"""The ``qkms`` command.

Every command uses one data-dir layout (``qkms.store.layout``): ``--data-dir``
(default ``.qkms``) holds the master key, and ``--environment`` (default
``dev``) picks the folder with that environment's store and audit chain, the
one ``qkms serve`` writes.  Inputs and outputs are files or stdin/stdout (``-``), raw or base64
(``--encoding``).  Results are JSON on stdout; errors go to stderr as
``qkms: error: <message>`` with exit code 2 for bad input and 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import errno
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from qkms import __version__, logs
from qkms.config import Settings, listens_on_loopback
from qkms.crypto import ethereum
from qkms.errors import InvalidInputError, QkmsError
from qkms.model.algorithms import resolve_algorithm

Handler = Callable[[argparse.Namespace], Any]
COMMANDS: dict[str, Handler] = {}
DESCRIPTION = ("qkms: create, rotate and use cryptographic keys (classical, post-quantum, "
               "hybrid) from the command line, in standalone mode (serve) or as a Kubernetes "
               "operator.")
# Optional packages and the extra that installs each (pip install 'qkms[EXTRA]').
EXTRAS = {"kopf": "operator", "kubernetes": "operator", "hvac": "vault", "boto3": "aws",
          "botocore": "aws", "azure": "azure", "pkcs11": "hsm"}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        COMMANDS[name] = func
        return func
    return register


# -- I/O helpers ---------------------------------------------------------------------

def read_input(path: str | None, encoding: str, field: str = "--in") -> bytes:
    raw = sys.stdin.buffer.read() if path in (None, "-") else _read_file(path, field)
    if encoding == "raw":
        return raw
    try:
        return base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            field, "is not valid base64 (use --encoding raw for bytes)") from None


def _read_file(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(field, f"cannot read {path}: {exc.strerror}") from None


def write_output(data: bytes | str, path: str | None, encoding: str) -> None:
    if isinstance(data, str):
        data = data.encode()
    elif encoding == "base64":
        data = base64.b64encode(data) + b"\n"
    if path in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        Path(path).write_bytes(data)


def to_json(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json", exclude={"public_key"})
    elif is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def print_json(value: Any) -> None:
    print(json.dumps(to_json(value), indent=2, default=str))


OPENED: list[Any] = []  # services a command opened: closed (final checkpoint) at its end


def service(args: argparse.Namespace, *, create: bool = False) -> Any:
    """The service of ``--environment``'s folder of the data dir; unless the command creates
    keys (``create``), an empty folder is an error that says what to run first."""
    from qkms.service import KeyManagementService
    from qkms.store.layout import require_store

    root = settings_from(args)
    settings = root.scoped()
    if not create:
        require_store(root.data_dir, settings.data_dir, settings.kek_path)
    svc = KeyManagementService(settings)
    OPENED.append(svc)
    return svc


async def run_command(name: str, args: argparse.Namespace) -> None:
    try:
        await COMMANDS[name](args)
    finally:
        while OPENED:
            await OPENED.pop().close()


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        environment=args.environment, provider=args.provider, data_dir=args.data_dir,
        master_key_file=args.master_key_file,
    )


# -- keys -----------------------------------------------------------------------------

@command("keys create")
async def keys_create(args: argparse.Namespace) -> None:
    print_json(await service(args, create=True).create_key(
        usage=args.usage, algorithm=args.algorithm, owner=args.owner, name=args.name,
        rotation_schedule=args.rotation_schedule, grace_period=args.grace_period,
        actor={"type": "CLI", "id": args.actor}))


@command("keys import")
async def keys_import(args: argparse.Namespace) -> None:
    from qkms.crypto.importing import from_pem, from_raw

    if bool(args.pem) == bool(args.raw):
        raise InvalidInputError("--pem", "give exactly one of --pem FILE or --raw FILE")
    if args.pem:
        password = os.environ.get("QKMS_IMPORT_PASSWORD")
        algorithm, private = from_pem(_read_file(args.pem, "--pem"),
                                      password.encode() if password else None)
        if args.algorithm and resolve_algorithm(args.algorithm).name != algorithm:
            raise InvalidInputError("--algorithm", f"the PEM holds a {algorithm} key")
    else:
        algorithm, private = from_raw(_read_file(args.raw, "--raw"),
                                      args.algorithm or "AES-256-GCM")
    print_json(await service(args, create=True).import_key(
        private=private, usage=args.usage, algorithm=algorithm, owner=args.owner,
        name=args.name, rotation_schedule=args.rotation_schedule,
        actor={"type": "CLI", "id": args.actor}))


@command("backup create")
async def backup_create(args: argparse.Namespace) -> None:
    from qkms import backup

    svc = service(args)
    key = backup.backup_key(args.backup_key_file or settings_from(args).data_dir / "backup.key")
    document = backup.create(svc, key)
    write_output(json.dumps(document, indent=1) + "\n", args.out, "raw")
    print(f"backed up {document['keys']} keys ({document['versions']} versions)",
          file=sys.stderr)


@command("backup restore")
async def backup_restore(args: argparse.Namespace) -> None:
    from qkms import backup

    document_bytes = read_input(args.input, "raw")
    svc = service(args, create=True)
    key = backup.backup_key(args.backup_key_file or settings_from(args).data_dir / "backup.key")
    try:
        document = json.loads(document_bytes)
    except ValueError:
        raise InvalidInputError("--in", "not a JSON backup file") from None
    count = await backup.restore(svc, document, key)
    print_json({"restored": count})


@command("validate")
async def validate(args: argparse.Namespace) -> None:
    from qkms.validate import run_checks

    checks = await run_checks(manifests=args.manifests, environment=args.environment,
                              provider=args.provider, data_dir=args.data_dir,
                              master_key_file=args.master_key_file)
    for check in checks:
        print(check.line())
    if not all(check.ok for check in checks):
        raise SystemExit(1)


@command("keys list")
async def keys_list(args: argparse.Namespace) -> None:
    keys = await service(args).list_keys()
    print_json([{k: getattr(m, k) for k in ("name", "key_id", "version", "algorithm", "usage",
                                           "state", "next_rotation")} for m in keys])


@command("keys show")
async def keys_show(args: argparse.Namespace) -> None:
    svc = service(args)
    print_json({"key": await svc.get_key(args.key), "versions": svc.get_record(args.key).versions})


@command("keys public")
async def keys_public(args: argparse.Namespace) -> None:
    svc = service(args)
    if args.format == "jwks":
        write_output(json.dumps(svc.jwks(args.key), indent=2) + "\n", args.out, "raw")
        return
    meta = await svc.get_key(args.key)
    if meta.public_key is None:
        raise InvalidInputError("key", f"{meta.name} is symmetric and has no public key")
    if args.format == "pem":
        if meta.public_key_pem is None:
            raise InvalidInputError("--format", f"{meta.algorithm} has no registered PEM form")
        write_output(meta.public_key_pem, args.out, "raw")
    elif args.format == "ethereum":
        address = ethereum.address_of(meta.algorithm, meta.public_key)
        if address is None:
            raise InvalidInputError("--format", f"only ECDSA-secp256k1 keys have an Ethereum "
                                    f"address, not {meta.algorithm}")
        write_output(address + "\n", args.out, "raw")
    else:
        write_output(meta.public_key, args.out, args.encoding)


@command("keys rotate")
async def keys_rotate(args: argparse.Namespace) -> None:
    print_json(await service(args).rotate_key(
        args.key, reason=args.reason, grace_period=args.grace_period,
        immediate=args.immediate, algorithm=args.algorithm,
        actor={"type": "CLI", "id": args.actor}))


@command("keys revoke")
async def keys_revoke(args: argparse.Namespace) -> None:
    print_json(await service(args).revoke_key(args.key, args.reason,
                                              actor={"type": "CLI", "id": args.actor}))


@command("keys delete")
async def keys_delete(args: argparse.Namespace) -> None:
    record = await service(args).schedule_key_deletion(args.key, args.window,
                                                       actor={"type": "CLI", "id": args.actor})
    print_json({"name": record.name, "versions": record.versions})


@command("keys cancel-deletion")
async def keys_cancel_deletion(args: argparse.Namespace) -> None:
    record = await service(args).cancel_key_deletion(args.key,
                                                     actor={"type": "CLI", "id": args.actor})
    print_json({"name": record.name, "versions": record.versions})


async def _use(args: argparse.Namespace, operation: str, data: Any, **options: Any) -> Any:
    return await service(args).use_key(args.key, operation, data,
                                       actor={"type": "CLI", "id": args.actor}, **options)


@command("keys sign")
async def keys_sign(args: argparse.Namespace) -> None:
    """``--recovery-id`` appends the id to the raw r||s: the 65-byte r||s||v form that
    libsecp256k1 and Ethereum tools take (v = 0 or 1)."""
    if args.recovery_id and args.format == "der":
        raise InvalidInputError("--format", "--recovery-id appends the id to a raw r||s "
                                "signature; leave --format out or use raw")
    result = await _use(args, "SIGN", read_input(args.input, "raw"),
                        signature_format=args.format, prehashed=args.prehashed,
                        recovery_id=args.recovery_id, low_s=True if args.low_s else None)
    signature = result.signature
    if result.recovery_id is not None:
        signature += bytes([result.recovery_id])
    write_output(signature, args.out, args.encoding)
    extra = f", recovery id {result.recovery_id}" if result.recovery_id is not None else ""
    print(f"signed with {result.key_id} (version {result.version}){extra}", file=sys.stderr)


@command("keys verify")
async def keys_verify(args: argparse.Namespace) -> None:
    signature = read_input(args.signature, args.encoding, "--signature")
    valid = await _use(args, "VERIFY", read_input(args.input, "raw"), signature=signature,
                       signature_format=args.format, prehashed=args.prehashed)
    print("valid" if valid else "invalid")
    if not valid:
        raise SystemExit(1)


@command("keys encrypt")
async def keys_encrypt(args: argparse.Namespace) -> None:
    result = await _use(args, "ENCRYPT", read_input(args.input, "raw"), context=args.context)
    write_output(result.ciphertext + "\n", args.out, "raw")


@command("keys decrypt")
async def keys_decrypt(args: argparse.Namespace) -> None:
    token = read_input(args.input, "raw").strip()
    result = await _use(args, "DECRYPT", token, context=args.context)
    write_output(result.plaintext, args.out, args.encoding)


@command("keys encapsulate")
async def keys_encapsulate(args: argparse.Namespace) -> None:
    result = await _use(args, "ENCAPSULATE", b"")
    write_output(result.ciphertext, args.out, args.encoding)
    write_output(result.shared_secret, args.secret_out, args.encoding)


@command("keys decapsulate")
async def keys_decapsulate(args: argparse.Namespace) -> None:
    result = await _use(args, "DECAPSULATE", read_input(args.input, args.encoding))
    write_output(result.shared_secret, args.out, args.encoding)


@command("keys derive")
async def keys_derive(args: argparse.Namespace) -> None:
    result = await _use(args, "DERIVE", b"", context=args.context, length=args.length)
    write_output(result.derived_key, args.out, args.encoding)


@command("keys rewrap")
async def keys_rewrap(args: argparse.Namespace) -> None:
    from qkms.store.layout import NoStoreError, environment_stores, has_records
    from qkms.store.rewrap import rewrap

    settings = settings_from(args)
    stores = environment_stores(settings.data_dir)  # one KEK seals every environment's store
    if not settings.kek_path.exists() and not any(has_records(s) for s in stores):
        raise NoStoreError(settings.data_dir)
    if args.new_master_key_file is not None and not args.new_master_key_file.is_file():
        raise InvalidInputError("--new-master-key-file",
                                f"{args.new_master_key_file} is not a file")
    count = await asyncio.to_thread(rewrap, settings, args.new_master_key_file, stores)
    print_json({"rewrapped": count, "master_key_file": str(settings.kek_path)})


@command("algorithms")
async def algorithms(args: argparse.Namespace) -> None:
    from qkms.model.algorithms import ALGORITHMS

    print_json([{"name": a.name, "aliases": list(a.aliases), "family": a.family.value,
                 "usages": sorted(u.value for u in a.usages), "library": a.library,
                 "standard": a.standard, "post_quantum": a.post_quantum, "hybrid": a.hybrid}
                for a in ALGORITHMS])


@command("serve")
async def serve(args: argparse.Namespace) -> None:
    import signal

    from qkms.standalone import BUNDLED_EXAMPLES, Standalone

    settings = settings_from(args)
    folder = args.manifests or BUNDLED_EXAMPLES
    if not folder.is_dir():
        raise InvalidInputError("--manifests", f"{folder} is not a folder")
    if args.worker_fd is not None:
        return await _serve_worker(args, settings, folder)
    serving = bool(args.listen) and not args.once
    workers = _worker_count() if serving else 1
    for flag, path in (("--tokens", args.tokens), ("--tls-cert", args.tls_cert),
                       ("--tls-key", args.tls_key), ("--tls-client-ca", args.tls_client_ca)):
        if path is not None and not path.is_file():
            raise InvalidInputError(flag, f"{path} is not a file")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InvalidInputError("--tls-key", "give --tls-cert and --tls-key together")
    if serving and not args.tls_cert and not listens_on_loopback(args.listen):
        raise InvalidInputError("--listen", f"plain HTTP only on loopback, not {args.listen}: "
                                            "give --tls-cert and --tls-key to listen there")
    auth = _standalone_auth(args) if serving else None
    # a busy port fails before any key is made
    sock = _listen_socket(args.listen, reuseport=workers > 1) if serving else None
    if args.manifests is None:
        print(f"qkms serve: no --manifests given; serving the bundled examples in {folder}")
    out = args.out or settings.data_dir / "projections"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = Standalone(settings, folder, out, say=lambda line: print(line, flush=True))
    metrics = None
    if serving:  # count every audited operation from the first reconcile, as the chain does
        from qkms.server.metrics import Metrics

        metrics = Metrics()
        runner.registry.on_new.append(metrics.attach)
    api = pool = None
    task = asyncio.create_task(runner.run(stop, poll=args.poll, once=args.once))
    try:
        if sock is not None:
            ready = asyncio.create_task(runner.ready.wait())
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if runner.ready.is_set() and workers > 1:  # keys exist: the workers may start
                pool = _start_workers(args, sock, workers)
                sock = None  # the first worker has it
                watcher = asyncio.create_task(pool.watch(stop))
            elif runner.ready.is_set():  # keys exist before the first request can arrive
                api = await _standalone_api(args, runner, auth, sock, metrics)
        await task
    finally:
        if pool is not None:
            stop.set()
            await watcher
            await pool.stop()
        if api is not None:
            await api.cleanup()
        elif sock is not None:
            sock.close()
        OPENED.extend(runner.registry.all())  # closed by run_command: final checkpoints
    print("qkms serve: stopped", flush=True)


def _worker_count() -> int:
    from qkms.server.workers import worker_count

    try:
        return worker_count(os.environ, os.cpu_count())
    except ValueError as exc:
        raise InvalidInputError("QKMS_DATA_PLANE_WORKERS", str(exc)) from None


def _start_workers(args: argparse.Namespace, sock: Any, count: int) -> Any:
    """``count`` data-plane worker processes on ``sock``'s port (SO_REUSEPORT)."""
    from qkms.server.workers import WorkerPool, worker_command

    host, port = sock.getsockname()[:2]
    pool = WorkerPool(worker_command(args.argv), host, port, count)
    pool.start(sock)
    print(f"qkms serve: data plane on {'https' if args.tls_cert else 'http'}://{args.listen} "
          f"({count} worker processes)", flush=True)
    return pool


async def _serve_worker(args: argparse.Namespace, settings: Settings, folder: Path) -> None:
    """One data-plane worker of ``qkms serve`` (started by it with ``--worker-fd``)."""
    import signal
    import socket

    from qkms.server.metrics import Metrics
    from qkms.standalone import ManifestDirectory, serve_worker

    sock = socket.socket(fileno=args.worker_fd)
    sock.setblocking(False)
    auth = _standalone_auth(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    directory = ManifestDirectory(settings, folder, say=lambda line: None)
    metrics = Metrics()
    directory.registry.on_new.append(metrics.attach)
    try:
        await serve_worker(directory, lambda: _standalone_api(args, directory, auth, sock,
                                                               metrics, quiet=True),
                           stop, poll=args.poll)
    finally:
        OPENED.extend(directory.registry.all())  # closed by run_command: final checkpoints


def _listen_socket(listen: str, *, reuseport: bool = False) -> Any:
    """Bind ``HOST:PORT`` now, so a busy port is reported before any key is made;
    ``reuseport``: with SO_REUSEPORT, for the data-plane workers to share the port."""
    import socket

    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidInputError("--listen", f"{listen!r} is not HOST:PORT")
    host, port = host.strip("[]") or "0.0.0.0", int(port_text)  # noqa: S104 - as asked
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise InvalidInputError("--listen", f"cannot listen on {listen}: {exc.strerror or exc}"
                                ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise QkmsError(f"port {port} is in use; use --listen HOST:PORT "
                            f"(e.g. --listen 127.0.0.1:{port + 1})") from None
        raise QkmsError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _standalone_auth(args: argparse.Namespace) -> Any:
    """Read the tokens file and the TLS files before any key is made: a mistake in them
    is reported first, not after reconciling."""
    import ssl

    import yaml

    from qkms.server.app import tls_context
    from qkms.server.auth import TokensFile

    if args.tls_cert:
        try:
            tls_context(args.tls_cert, args.tls_key, args.tls_client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise InvalidInputError("--tls-cert", f"cannot load the certificate, key or CA: "
                                                  f"{exc}") from None
    if not args.tokens:
        return None
    try:
        return TokensFile(args.tokens)
    except InvalidInputError as exc:
        raise InvalidInputError("--tokens", f"{args.tokens}: {exc}") from None
    except (yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise InvalidInputError("--tokens", f"{args.tokens} is not a tokens file: "
                                            f"{type(exc).__name__}") from None


async def _standalone_api(args: argparse.Namespace, runner: Any, auth: Any, sock: Any,
                          metrics: Any, *, quiet: bool = False) -> Any:
    from qkms.server.app import start_data_plane
    from qkms.server.auth import TokensFile

    if auth is None:
        auth = TokensFile.empty()
        if not quiet:
            print("qkms serve: no --tokens file: key operations will answer 401", flush=True)
    tls = (args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    api = await start_data_plane(runner, runner.registry, auth, auth, args.listen, tls,
                                 sock=sock, metrics=metrics, quiet=True)
    if not quiet:
        print(f"qkms serve: data plane on {'https' if tls else 'http'}://{args.listen}",
              flush=True)
    return api


@command("operator")
async def operator(args: argparse.Namespace) -> None:
    from kubernetes import config

    try:  # as the operator will log in: fail now, not in a retry loop, if it cannot
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except config.ConfigException as exc:
            raise QkmsError(f"no Kubernetes cluster to run in ({exc}); set KUBECONFIG, or run "
                            f"`qkms serve` for standalone mode without a cluster") from None
    from qkms.k8s.main import run_operator

    logs.configure(json_lines=True)
    await run_operator(standalone=args.standalone, namespaces=args.namespace or [],
                       liveness=args.liveness)


@command("crds")
async def crds(args: argparse.Namespace) -> None:
    from qkms.k8s.crds import render_crds, write_crds

    if args.write:
        for path in write_crds(args.write):
            print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(render_crds())


@command("pqc status")
async def pqc_status(args: argparse.Namespace) -> None:
    from datetime import UTC

    from qkms.reconcile.pqc_report import pqc_status as report

    if args.manifests:
        from qkms.standalone import load_manifests

        if not args.manifests.is_dir():
            raise InvalidInputError("--manifests", f"{args.manifests} is not a folder")
        found = load_manifests(args.manifests)
        keys, namespaces, policies = found.keys, found.namespaces, found.policies
    else:
        keys, namespaces, policies = await _cluster_keys()
    rows = report(keys, namespaces, policies, datetime.now(UTC))
    print_json([r for r in rows if r.quantum_vulnerable or args.all])


async def _cluster_keys() -> tuple[Any, Any, Any]:
    """ManagedKeys, their namespaces' labels and the KeyPolicies, from the cluster."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    from qkms.k8s.kube_api import Kube
    from qkms.model.managed_key import parse_managed_key

    try:
        kube = Kube()
    except ConfigException:
        raise QkmsError("no Kubernetes cluster configured (no KUBECONFIG, ~/.kube/config or "
                        "in-cluster account): give --manifests DIR to read a folder") from None
    try:
        keys = [parse_managed_key(b) for b in await kube.managed_keys()]
        listed = {k.namespace for k in keys if k.namespace}  # the API lists them namespaced
        namespaces = {n: await kube.namespace_labels(n) for n in listed}
        return keys, namespaces, await kube.key_policies()
    except ApiException as exc:
        raise QkmsError(f"the Kubernetes API answered {exc.status} {exc.reason} (are the qkms "
                        f"CRDs installed? `kubectl apply -f crds/`)") from None
    except (HTTPError, OSError) as exc:
        raise QkmsError(f"cannot reach the Kubernetes API at {kube.api.configuration.host}: "
                        f"{type(exc).__name__}") from None


@command("demo")
async def demo(args: argparse.Namespace) -> None:
    from qkms.demo import run_demo

    await run_demo(settings_from(args))


@command("call")
async def call(args: argparse.Namespace) -> None:
    """A key operation through the data plane, as a workload does (qkms.client)."""
    from qkms.client import QkmsClient, default_ca_file, default_token_file

    token = os.environ.get("QKMS_TOKEN")
    token_file = args.token_file or (None if token else default_token_file())
    ca_file = args.ca_file or default_ca_file()
    op = args.operation.lower()
    data: Any = b""
    if op in ("sign", "verify", "encrypt"):
        data = read_input(args.input, "raw")
    elif op == "decrypt":
        data = read_input(args.input, "raw").strip().decode()
    elif op == "decapsulate":
        data = read_input(args.input, args.encoding)
    signature = read_input(args.signature, args.encoding, "--signature") \
        if op == "verify" else None
    import aiohttp

    if "/" not in args.key:
        raise InvalidInputError("key", f"{args.key!r} is not NAMESPACE/NAME")
    for flag, path in (("--token-file", args.token_file), ("--ca-file", args.ca_file)):
        if path is not None and not path.is_file():
            raise InvalidInputError(flag, f"{path} is not a file")
    try:
        async with QkmsClient(args.url, token=token, token_file=token_file,
                              ca_file=ca_file) as client:
            result = await client.use_key(args.key, op, data, signature=signature,
                                          context=args.context, length=args.length)
    except aiohttp.InvalidURL:
        raise InvalidInputError("--url", f"{args.url!r} is not a URL") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = str(exc) if isinstance(exc, aiohttp.ClientError) and str(exc) else "timed out"
        raise QkmsError(f"cannot reach the qkms server at {args.url}: {reason} (is `qkms "
                        f"serve` running? --url or QKMS_URL names it)") from None
    if isinstance(result, bool):
        print("valid" if result else "invalid")
        if not result:
            raise SystemExit(1)
        return
    for field in ("signature", "plaintext", "shared_secret", "derived_key"):
        if getattr(result, field) is not None:
            write_output(getattr(result, field), args.out, args.encoding)
    if isinstance(result.ciphertext, str):
        write_output(result.ciphertext + "\n", args.out, "raw")
    elif result.ciphertext is not None:
        write_output(result.ciphertext, args.ciphertext_out or "-", args.encoding)
    print(f"{op} with {result.key_id} (version {result.version})", file=sys.stderr)


@command("providers")
async def providers(args: argparse.Namespace) -> None:
    from qkms.providers.capabilities import table

    rows = table()
    if args.provider:
        provider = settings_from(args).provider.value  # refuses an unknown name, listing all
        rows = [r for r in rows if r["provider"] == provider]
    width = max(len(r["algorithm"]) for r in rows)
    for row in rows:
        print(f"{row['provider']:<16} {row['algorithm']:<{width}}  {row['mode']}")


@command("version")
async def version(args: argparse.Namespace) -> None:
    print(f"qkms {__version__}")


# -- parser ---------------------------------------------------------------------------

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
    call_cmd.add_argument("--url", default=os.environ.get("QKMS_URL", "https://qkms.qkms-system:8443"))
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


def _loop_factory() -> Any:
    """uvloop where installed (the operator extra brings it): a faster event loop for the
    data plane; the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # data-plane workers run it again
    logs.configure()
    name = " ".join(p for p in (args.group, getattr(args, "action", None),
                                getattr(args, "audit_action", None)) if p)
    try:
        if args.group == "audit":
            from qkms.audit import cli as audit_cli

            return asyncio.run(audit_cli.run(args))
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run_command(name, args))
    except InvalidInputError as exc:
        print(f"qkms: error: {exc}", file=sys.stderr)
        return 2
    except QkmsError as exc:
        print(f"qkms: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        if package not in EXTRAS:
            raise
        extra = EXTRAS[package]
        print(f"qkms: error: `qkms {name}` needs {package}, from the {extra} extra: "
              f"pip install 'qkms[{extra}]'", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader (head, less) went away: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:  # a file or folder the command was pointed at
        where = f": {exc.filename}" if exc.filename else ""
        print(f"qkms: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
