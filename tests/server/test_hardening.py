"""Issue 14's attacks on a running data plane, each reproduced and refused."""

from __future__ import annotations

import io
import json
import logging

import aiohttp

from qkms import logs
from tests.server.common import TOKENS


async def raw_post(url: str, token: str | None = "checkout", body: bytes = b"{}",
                   headers: dict | None = None) -> tuple[int, dict]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {TOKENS.get(token, token)}"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=sent) as rsp:
            text = await rsp.text()
            try:
                return rsp.status, json.loads(text)
            except ValueError:
                return rsp.status, {"text": text}


async def test_a_newline_in_the_path_cannot_forge_a_log_line(plane):
    """Item 8: %0A in a path once wrote a second, forged line into the server log."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.LineFormatter("qkms: %(levelname)s: %(message)s"))
    logger = logging.getLogger("key-management:server")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        forged = "x%0Aqkms:%20INFO:%20sign%20payments-forged:%20ok%0D"
        status, _ = await raw_post(f"{plane.url}/v1/keys/payments/{forged}:sign", token=None,
                                   headers={"X-Request-Id": "abc\u2028def"})
    finally:
        logger.removeHandler(handler)
    assert status == 401
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\\n" in lines[0]
    assert not any(line.startswith("qkms: INFO: sign payments-forged") for line in lines)


def audit_bytes(plane) -> int:
    folder = plane.service().audit.root
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


async def test_unauthenticated_requests_cost_the_audit_log_one_bounded_counted_entry(plane):
    """Item 4: 200 no-token requests with 7,000-character names added 7 KB of fsynced audit
    each. Now a denial records bounded fields, and one source's repeats become one entry
    with their count."""
    service = plane.service()
    before, entries = audit_bytes(plane), len(plane.seen)
    long = "k" * 7000
    for _ in range(200):
        status, body = await raw_post(f"{plane.url}/v1/keys/payments/{long}:sign", token=None)
        assert status == 401 and body["error"]["code"] == "unauthenticated"
    denied = plane.seen[entries:]
    assert len(denied) == 1 and len(denied[0].key_name) <= 320
    assert denied[0].actor.type == "ANONYMOUS" and denied[0].details["source"].startswith("ip:")
    await plane.data_plane.denials.flush()
    counted = plane.seen[entries + 1:]
    assert [e.details.get("count") for e in counted] == ["199"]
    assert audit_bytes(plane) - before < 8 * 1024, "the chain grew with the requests' names"
    assert service.environment.value == "dev"


async def test_a_refused_request_creates_no_environment(plane, tmp_path):
    """Item 4: one no-token POST to a staging namespace created data/staging/ and a
    checkpoint signing key. Nothing is created before authorization."""
    staging = tmp_path / "data" / "staging"
    assert not staging.exists()
    for token in (None, "not-a-token", "checkout"):  # anonymous, unknown, not allowed there
        status, body = await raw_post(f"{plane.url}/v1/keys/checkout-staging/api:sign", token,
                                      body=b'{"input": "bQ=="}')
        assert not staging.exists(), f"made by a request that answered {status} {body}"
        assert status in (401, 403)
    assert [s.environment.value for s in plane.standalone.registry.all()] == ["dev"]


async def test_a_token_file_with_a_date_or_zoneless_expiry(plane, tmp_path):
    """Item 9: `expires: 2020-01-01 00:00:00` made every request with that token answer 500.
    A zoneless date-time is refused at load time naming the field; a date is midnight UTC,
    and the expired token answers 401, audited with its ServiceAccount."""
    import pytest

    from qkms.errors import InvalidInputError
    from qkms.server.auth import TokensFile

    bad = tmp_path / "bad.yaml"
    bad.write_text("tokens:\n- {serviceAccount: payments/x, token: t, "
                   "expires: 2020-01-01 00:00:00}\n")
    with pytest.raises(InvalidInputError) as refused:
        TokensFile(bad)
    assert refused.value.field == "tokens[0].expires" and "zone" in refused.value.reason
    for text, field in (("tokens: [{serviceAccount: payments/x, token: t, expires: soon}]",
                         "tokens[0].expires"),
                        ("tokens: [{serviceAccount: payments, token: t}]",
                         "tokens[0].serviceAccount"),
                        ("tokens: [{serviceAccount: payments/x, sha256: abc}]",
                         "tokens[0].sha256"),
                        ("grants: [{serviceAccount: payments/x, namespace: p, verbs: sign}]",
                         "grants[0].verbs")):
        bad.write_text(text)
        with pytest.raises(InvalidInputError) as refused:
            TokensFile(bad)
        assert refused.value.field == field
    dated = tmp_path / "dated.yaml"
    dated.write_text("tokens:\n- {serviceAccount: payments/old, token: dated, "
                     "expires: 2020-01-01}\ngrants:\n- {serviceAccount: payments/old, "
                     "namespace: payments, verbs: [sign]}\n")
    plane.data_plane.authenticator = plane.data_plane.authorizer = \
        TokensFile(dated)
    entries = len(plane.seen)
    status, body = await raw_post(f"{plane.url}{SIGN}", "dated", body=b'{"input": "bQ=="}')
    assert status == 401 and body["error"]["message"] == "token expired"
    (denial,) = plane.seen[entries:]
    assert denial.result == "denied" and denial.actor.id == "system:serviceaccount:payments:old"


async def test_a_token_of_an_undeclared_namespace_has_no_environment(plane, tmp_path):
    """Item 11: standalone mode gave a namespace without a Namespace manifest the default
    environment, so its token passed the environment check."""
    from qkms.server.auth import TokensFile

    tokens = tmp_path / "ghost.yaml"
    tokens.write_text("tokens:\n- {serviceAccount: ghost/app, token: ghost}\ngrants:\n"
                      "- {serviceAccount: ghost/app, namespace: payments, verbs: [sign]}\n")
    plane.data_plane.authenticator = plane.data_plane.authorizer = \
        TokensFile(tokens)
    status, body = await raw_post(f"{plane.url}{SIGN}", "ghost", body=b'{"input": "bQ=="}')
    assert status == 403 and "environment none" in body["error"]["message"]


async def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {TOKENS.get(token, token)}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as rsp:
            return rsp.status, await rsp.text()


async def test_probes_are_public_and_bare_detail_and_metrics_need_a_token(plane, monkeypatch):
    """Item 13: /metrics/keys listed every key name to anyone; /health/keys showed paths and
    corrupt record names."""
    status, text = await get(plane.url + "/metrics/keys")
    assert status == 401 and "user-service-signing" not in text
    status, text = await get(plane.url + "/health/keys")
    assert status == 200 and json.loads(text) == {"status": "healthy"}
    for path, answer in (("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})):
        status, text = await get(plane.url + path)
        assert status == 200 and json.loads(text) == answer
    for token in ("checkout", "not-a-token"):  # a key user is not a monitor
        status, _ = await get(plane.url + "/metrics/keys", token)
        assert status in (401, 403)
        status, text = await get(plane.url + "/health/keys", token)
        assert status in (401, 403) and str(plane.standalone.out) not in text
    status, text = await get(plane.url + "/metrics/keys", "monitor")
    assert status == 200 and 'key="payments/user-service-signing"' in text
    status, text = await get(plane.url + "/health/keys", "monitor")
    assert status == 200 and "components" in json.loads(text)["environments"]["dev"]


SIGN = "/v1/keys/payments/user-service-signing:sign"


async def test_audit_reads_are_scoped_and_digests_are_keyed(plane, tmp_path):
    """Item 2: a caller allowed `audit` in its own namespace read every environment's entries,
    and an entry's unsalted sha256(input) gave a 4-digit plaintext away."""
    import hashlib

    service = plane.service()
    await service.create_key(name="billing/ledger", usage="SIGNING", algorithm="Ed25519",
                             owner="billing")
    status, _ = await raw_post(f"{plane.url}/v1/keys/billing/ledger:sign", "billing",
                               body=b'{"input": "NDI0Mg=="}')  # "4242"
    assert status == 200
    status, _ = await raw_post(f"{plane.url}{SIGN}", body=b'{"input": "NDI0Mg=="}')
    assert status == 200
    status, text = await get(plane.url + "/audit/keys?limit=1000", "auditor")
    assert status == 200
    audit = json.loads(text)
    names = {e["key_name"] for e in audit["dev"]["recent"]}
    assert names and all(n.startswith("payments/") for n in names), names
    assert set(audit) == {"dev"} and audit["dev"]["namespaces"] == ["payments"]
    for query in ("?namespace=billing", "?namespace=payments,billing",
                  "?namespace=checkout-prod"):
        status, _ = await get(plane.url + "/audit/keys" + query, "auditor")
        assert status == 403
    # The digest of "4242" is keyed: the 10,000 PINs' sha256 match nothing.
    signed = [e for e in plane.seen if e.operation == "SIGN" and e.result == "success"]
    kept = {e.digests["data"] for e in signed}
    assert all(d.startswith("hmac-sha256:") for d in kept)
    guesses = {"sha256:" + hashlib.sha256(f"{pin:04d}".encode()).hexdigest()
               for pin in range(10_000)}
    assert not guesses & kept and not any(d.split(":")[-1] in {g[7:] for g in guesses}
                                          for d in kept)
    # Whoever holds the store and its master key can still find an input's entries.
    from qkms.audit.mac import keyring_near
    from qkms.audit.search import Query, search

    folder = service.audit.root
    found = list(search(folder, Query(digests=frozenset(keyring_near(folder)
                                                       .candidates(b"4242")))))
    assert {e["key_name"] for e in found} == {"billing/ledger",
                                              "payments/user-service-signing"}


async def test_a_health_probe_answers_during_a_large_rsa_batch(plane, monkeypatch):
    """Item 5: a 1,000-item RSA batch after the key cache expired reloaded the key 1,000
    times on the event loop; /health/keys took 33 s."""
    import asyncio
    import base64
    import time

    service = plane.service()
    meta = await service.create_key(name="payments/rsa-signing", usage="SIGNING",
                                    algorithm="RSA-2048", owner="payments")
    service.provider.forget(meta.key_id)  # the key cache expired
    loads = []
    original = getattr(service.provider, "_load", None)
    if original is not None:
        async def counted(key):
            loads.append(key.key_id)
            return await original(key)
        monkeypatch.setattr(service.provider, "_load", counted)
    items = [{"input": base64.b64encode(b"item %d" % i).decode()} for i in range(1000)]
    done = asyncio.Event()
    latencies: list[float] = []

    async def probe() -> None:
        async with aiohttp.ClientSession() as session:
            while not done.is_set():
                started = time.perf_counter()
                async with session.get(plane.url + "/health/keys") as rsp:
                    assert rsp.status == 200
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0.05)
    try:
        status, body = await raw_post(f"{plane.url}/v1/keys/payments/rsa-signing:sign",
                                      body=json.dumps({"batch_input": items}).encode())
    finally:
        done.set()
        await prober
    assert status == 200 and all("signature" in r for r in body["batch_results"])
    assert latencies and max(latencies) < 1.0, f"slowest probe {max(latencies):.2f} s"
    assert loads.count(meta.key_id) == 1  # loaded once for the whole batch


async def test_an_old_record_put_back_does_not_unrevoke_the_key(plane):
    """Item 1: copy the key's record, revoke it, copy the old record back: ~2 s later encrypt
    and decrypt answered 200 again and every check stayed green."""
    import asyncio

    service = plane.service()
    name = "payments/storage-encryption"
    status, sealed = await raw_post(f"{plane.url}/v1/keys/{name}:encrypt",
                                    body=b'{"input": "c2VjcmV0"}')
    assert status == 200
    path = service.sealed.records.root / "keys" / "payments~storage-encryption.rec"
    before = path.read_bytes()
    await service.revoke_key(name, "compromised laptop")
    status, body = await raw_post(f"{plane.url}/v1/keys/{name}:encrypt",
                                  body=b'{"input": "c2VjcmV0"}')
    assert status == 409
    path.write_bytes(before)  # the attack
    await asyncio.sleep(service.settings.catalog_ttl + 0.2)
    for operation, payload in (("encrypt", {"input": "c2VjcmV0"}),
                               ("decrypt", {"ciphertext": sealed["ciphertext"]})):
        status, body = await raw_post(f"{plane.url}/v1/keys/{name}:{operation}",
                                      body=json.dumps(payload).encode())
        assert status == 503 and body["error"]["code"] == "record_rollback", body
    status, text = await get(plane.url + "/health/keys", "monitor")
    store = json.loads(text)["environments"]["dev"]["components"]["store"]
    assert store["status"] == "degraded" and name in store["rolled_back_keys"]
    found = [e for e in plane.seen if e.operation == "RECORD_ROLLBACK"]
    assert [e.key_name for e in found] == [name]
    assert service.catalog.get(name).versions[0].state.value == "REVOKED"  # stays revoked
