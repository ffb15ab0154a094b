"""A secp256k1 key's projection carries its Ethereum address beside the PEM and JWKS."""

from __future__ import annotations

import json

from eth_keys import keys as eth_keys

from qkms.config import Settings
from qkms.model.managed_key import parse_managed_key
from qkms.reconcile.reconciler import KeyReconciler
from qkms.reconcile.registry import ServiceRegistry

DEV = {"qkms.io/environment": "dev"}


def body(algorithm: str) -> dict:
    return {"apiVersion": "qkms.io/v1alpha1", "kind": "ManagedKey",
            "metadata": {"name": "k", "namespace": "ns", "uid": "uid-1", "generation": 1,
                         "resourceVersion": "7"},
            "spec": {"usage": "SIGNING", "algorithm": algorithm, "owner": "o",
                     "projection": {"secretName": "k-pub"}}}


async def test_secp256k1_projection_has_the_eip55_address(tmp_path, clock) -> None:
    reconciler = KeyReconciler(ServiceRegistry(Settings(data_dir=tmp_path), clock=clock),
                               clock=clock)
    out = await reconciler.reconcile(parse_managed_key(body("ECDSA-secp256k1")), DEV, [])
    public = out.record.current.public_key
    expected = eth_keys.PublicKey(public[1:]).to_checksum_address()
    assert out.projection["ethereum-address"] == expected
    assert json.loads(out.projection["jwks.json"])["keys"][0]["crv"] == "secp256k1"
    other = await reconciler.reconcile(
        parse_managed_key({**body("ECDSA-P256"), "metadata": {
            **body("x")["metadata"], "name": "p", "uid": "uid-2"}}), DEV, [])
    assert "ethereum-address" not in other.projection
