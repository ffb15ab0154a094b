"""spec.importFrom needs the Secret's consent (issue 14 item 6): a ManagedKey could turn any
Secret of its namespace into a key it then used through the API."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from qkms.config import Settings
from qkms.model.managed_key import parse_managed_key
from qkms.reconcile.reconciler import KeyReconciler
from qkms.reconcile.registry import ServiceRegistry

DEV = {"qkms.io/environment": "dev"}
IMPORT_ANNOTATION = "qkms.io/import-allowed-for"
PEM = ed25519.Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption())


def body(name: str, **source) -> dict:
    return {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                         "generation": 1},
            "spec": {"usage": "SIGNING", "owner": "o",
                     "importFrom": {"secretName": "legacy", **source}}}


def reconciler(tmp_path, clock, secrets: dict) -> KeyReconciler:
    async def read(namespace: str, name: str):
        if (namespace, name) not in secrets:
            raise LookupError(name)
        return secrets[(namespace, name)]

    return KeyReconciler(ServiceRegistry(Settings(data_dir=tmp_path), clock=clock),
                         clock=clock, secrets=read)


def ready(out) -> object:
    return next(c for c in out.status.conditions if c.type == "Ready")


async def test_only_a_secret_that_names_the_managed_key_can_be_imported(tmp_path, clock):
    secrets = {("ns", "legacy"): ({}, {"tls.key": PEM, "password": b"hunter2"})}
    rec = reconciler(tmp_path, clock, secrets)
    refusals = []
    for marks in ({}, {IMPORT_ANNOTATION: "someone-else"},
                  {IMPORT_ANNOTATION: "thief-and-more"}):
        secrets[("ns", "legacy")] = (marks, secrets[("ns", "legacy")][1])
        out = await rec.reconcile(parse_managed_key(body("thief", key="tls.key")), DEV, [])
        refusals.append(ready(out).message)
        assert ready(out).status == "False" and ready(out).reason == "InvalidSpec"
    missing = await rec.reconcile(parse_managed_key(body("thief", secretName="absent")),
                                  DEV, [])
    # Refused alike whether it exists or not, naming the annotation, not the data.
    assert len({m.replace("absent", "legacy") for m in [*refusals, ready(missing).message]}) == 1
    assert f"{IMPORT_ANNOTATION}: thief" in refusals[0]
    for message in refusals:
        assert "tls.key" not in message and "password" not in message and "2 keys" not in message
    assert all(s.user_records() == [] for s in rec.registry.all())

    secrets[("ns", "legacy")] = ({IMPORT_ANNOTATION: "other, importer"},
                                 {"tls.key": PEM, "password": b"hunter2"})
    out = await rec.reconcile(parse_managed_key(body("importer", key="tls.key")), DEV, [])
    assert ready(out).status == "True", ready(out).message
    assert out.record.algorithm == "Ed25519"


async def test_a_refused_import_says_nothing_of_the_secrets_contents(tmp_path, clock):
    secrets = {("ns", "legacy"): ({IMPORT_ANNOTATION: "k"},
                                  {"tls.key": PEM, "ca.crt": b"x"})}
    rec = reconciler(tmp_path, clock, secrets)
    for source in ({}, {"key": "nope"}, {"key": "ca.crt"}):
        raw = body("k", **source)
        raw["spec"]["algorithm"] = "ECDSA-P256"
        out = await rec.reconcile(parse_managed_key(raw), DEV, [])
        message = ready(out).message
        assert ready(out).status == "False" and message.startswith("spec.importFrom")
        for word in ("tls.key", "ca.crt", "nope", "2 keys", "Ed25519", "holds a"):
            assert word not in message, message
