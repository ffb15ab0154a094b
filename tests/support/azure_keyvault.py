"""An HTTPS emulator of the Azure Key Vault *keys* REST API (7.x), for tests only.

No Key Vault emulator exists in any registry, so this one covers exactly what the
AZURE_KEY_VAULT provider and the benchmark use, shaped as the REST reference
documents it (learn.microsoft.com/rest/api/keyvault/keys):

* ``POST /keys/{name}/create`` (an existing name gets a new version; a soft-deleted
  name is a 409), ``GET /keys/{name}[/{version}]``, ``PATCH /keys/{name}/{version}``
  (enabled, key_ops, tags), ``GET /keys/{name}/versions``, ``DELETE /keys/{name}``
  (soft delete, ``recoveryLevel`` Recoverable+Purgeable, 90 days);
* ``POST /keys/{name}/{version}/{sign,decrypt,wrapkey,unwrapkey}`` with the JWA
  algorithms ES256, ES256K, PS256, RS256, RSA-OAEP, RSA-OAEP-256 (signatures over a
  digest the client computed; EC signatures as raw r||s);
* ``GET``/``DELETE`` (purge) ``/deletedkeys/{name}``, ``POST /deletedkeys/{name}/recover``;
* the bearer challenge: a request without a token gets 401 with
  ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/TENANT",
  resource="https://vault.azure.net"``; any bearer token is then accepted;
* errors as ``{"error": {"code", "message"}}``: KeyNotFound (404), Forbidden for a
  disabled key or a key operation it does not allow (403), BadParameter (400),
  Conflict (409), and a missing or unknown ``api-version`` (400).

Keys are generated and held here with ``cryptography`` (never exported).  The server
runs in its own thread and event loop on 127.0.0.1 with a self-signed certificate
made at start (``ca_file`` is what clients pass as ``connection_verify``);
``stop()``/``start()`` take it down and bring it back on the same port with the same
keys, as a vault outage would.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

API_VERSIONS = {"7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01"}
TENANT = "00000000-0000-0000-0000-00000000qkms"
CHALLENGE = (f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
             'resource="https://vault.azure.net"')
NAME_RE = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
CURVES = {"P-256": (ec.SECP256R1(), 32), "P-256K": (ec.SECP256K1(), 32),
          "P-384": (ec.SECP384R1(), 48), "P-521": (ec.SECP521R1(), 66)}
EC_SIGN = {"ES256": ("P-256", 32), "ES256K": ("P-256K", 32), "ES384": ("P-384", 48),
           "ES512": ("P-521", 64)}
RSA_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
RETENTION_DAYS = 90


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


class VaultError(Exception):
    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.inner = status, code, message, inner

    def response(self) -> web.Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner:
            error["innererror"] = {"code": self.inner}
        return web.json_response({"error": error}, status=self.status)


@dataclass
class Version:
    version: str
    kty: str
    private: Any
    key_ops: list[str]
    crv: str | None = None
    enabled: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    updated: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Deleted:
    versions: list[Version]
    deleted: int
    purge: int


class KeyVaultEmulator:
    """State (keys, soft-deleted keys) outlives stop/start; only the listener goes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys: dict[str, list[Version]] = {}
        self.deleted: dict[str, Deleted] = {}
        self.requests = 0
        self.port = _free_port()
        self.ca_file = directory / "vault-cert.pem"
        self._key_file = directory / "vault-key.pem"
        self._make_certificate()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="keyvault-emulator")
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- listener ---------------------------------------------------------------------
    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.ca_file, self._key_file)
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context,
                          reuse_address=True).start()

    def _make_certificate(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qkms Key Vault emulator")])
        now = dt.datetime.now(dt.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        self.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        self._key_file.chmod(0o600)

    # -- dispatch ---------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response(
                {"error": {"code": "Unauthorized",
                           "message": "AKV10000: Request is missing a Bearer or PoP token."}},
                status=401, headers={"WWW-Authenticate": CHALLENGE})
        try:
            version = request.query.get("api-version")
            if version not in API_VERSIONS:
                raise VaultError(400, "BadParameter",
                                 f"The specified version ({version}) is not recognized.")
            body = await request.json() if request.can_read_body else {}
            result = await self._route(request.method, request.path.strip("/").split("/"), body)
        except VaultError as exc:
            return exc.response()
        except (ValueError, KeyError, TypeError) as exc:
            return VaultError(400, "BadParameter", f"Invalid request: {exc}").response()
        return web.Response(status=204) if result is None else web.json_response(result)

    async def _route(self, method: str, parts: list[str], body: dict[str, Any]) -> Any:
        if parts[0] == "keys" and len(parts) >= 2:
            name, rest = parts[1], parts[2:]
            if method == "POST" and rest == ["create"]:
                return await self._create(name, body)
            if method == "DELETE" and rest in ([], [""]):
                return self._delete(name)
            if method == "GET" and rest == ["versions"]:
                return {"value": [self._item(name, v) for v in self._versions(name)],
                        "nextLink": None}
            if method == "GET" and len(rest) <= 1:
                return self._bundle(name, self._version(name, rest[0] if rest else ""))
            if method == "PATCH" and len(rest) == 1:
                return self._update(name, self._version(name, rest[0]), body)
            if method == "POST" and len(rest) == 2:
                return self._operate(name, self._version(name, rest[0]), rest[1], body)
        if parts[0] == "deletedkeys" and len(parts) >= 2:
            name, rest = parts[1], parts[2:]
            deleted = self.deleted.get(name)
            if deleted is None:
                raise VaultError(404, "KeyNotFound", f"Deleted Key not found: {name}")
            if method == "GET" and not rest:
                return self._deleted_bundle(name, deleted)
            if method == "DELETE" and not rest:
                del self.deleted[name]
                return None
            if method == "POST" and rest == ["recover"]:
                self.keys[name] = self.deleted.pop(name).versions
                return self._bundle(name, self.keys[name][-1])
        raise VaultError(404, "NotFound", f"{method} /{'/'.join(parts)} is not an operation "
                                          "of this emulator")

    # -- keys -------------------------------------------------------------------------
    def _versions(self, name: str) -> list[Version]:
        versions = self.keys.get(name)
        if not versions:
            raise VaultError(404, "KeyNotFound",
                             f"A key with (name/id) {name} was not found in this key vault. "
                             "If you recently deleted this key you may be able to recover it "
                             "using the correct recovery command.")
        return versions

    def _version(self, name: str, version: str) -> Version:
        versions = self._versions(name)
        if not version:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version:
                return candidate
        raise VaultError(404, "KeyNotFound", f"A key with (name/id) {name}/{version} was not "
                                             "found in this key vault.")

    async def _create(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if not NAME_RE.match(name):
            raise VaultError(400, "BadParameter", "The request URI contains an invalid name: "
                                                  f"{name}")
        if name in self.deleted:
            raise VaultError(409, "Conflict", f"Key {name} is currently in a deleted but "
                             "recoverable state, and its name cannot be reused; in this state, "
                             "the key can only be recovered or purged.")
        kty = body["kty"]
        if kty in ("RSA", "RSA-HSM"):
            size = int(body.get("key_size") or 2048)
            if size not in (2048, 3072, 4096):
                raise VaultError(400, "BadParameter", f"Invalid key size {size} for RSA key")
            private: Any = await asyncio.to_thread(rsa.generate_private_key, 65537, size)
            ops, crv = body.get("key_ops") or RSA_OPS, None
        elif kty in ("EC", "EC-HSM"):
            crv = body.get("crv") or "P-256"
            if crv not in CURVES:
                raise VaultError(400, "BadParameter", f"Invalid curve name {crv}")
            private, ops = ec.generate_private_key(CURVES[crv][0]), body.get("key_ops") or [
                "sign", "verify"]
        else:
            raise VaultError(400, "BadParameter", f"Key type {kty} is not supported by this "
                             "vault (oct keys need a Managed HSM)")
        attributes = body.get("attributes") or {}
        version = Version(secrets.token_hex(16), kty, private, list(ops), crv,
                          enabled=attributes.get("enabled", True), tags=body.get("tags") or {})
        self.keys.setdefault(name, []).append(version)
        return self._bundle(name, version)

    def _update(self, name: str, version: Version, body: dict[str, Any]) -> dict[str, Any]:
        attributes = body.get("attributes") or {}
        if "enabled" in attributes:
            version.enabled = bool(attributes["enabled"])
        if body.get("key_ops") is not None:
            version.key_ops = list(body["key_ops"])
        if body.get("tags") is not None:
            version.tags = dict(body["tags"])
        version.updated = int(time.time())
        return self._bundle(name, version)

    def _delete(self, name: str) -> dict[str, Any]:
        self._versions(name)  # 404 unless it exists
        now = int(time.time())
        self.deleted[name] = Deleted(self.keys.pop(name), now, now + RETENTION_DAYS * 86400)
        return self._deleted_bundle(name, self.deleted[name])

    # -- cryptography -----------------------------------------------------------------
    def _operate(self, name: str, version: Version, op: str, body: dict[str, Any]) -> Any:
        names = {"sign": "sign", "decrypt": "decrypt", "encrypt": "encrypt",
                 "wrapkey": "wrapKey", "unwrapkey": "unwrapKey"}
        if op not in names:
            raise VaultError(404, "NotFound", f"Unknown key operation {op}")
        if not version.enabled:
            raise VaultError(403, "Forbidden", f"Operation {names[op]} is not allowed on a "
                             "disabled key.", inner="KeyDisabled")
        if names[op] not in version.key_ops:
            raise VaultError(403, "Forbidden", f"Operation {names[op]} is not permitted on "
                             "this key.", inner="KeyOperationForbidden")
        alg, value = body["alg"], unb64u(body["value"])
        kid = self._kid(name, version)
        if op == "sign":
            return {"kid": kid, "value": b64u(self._sign(version, alg, value))}
        if version.kty not in ("RSA", "RSA-HSM"):
            raise VaultError(400, "BadParameter", f"Algorithm {alg} is not valid for this key")
        pad = _oaep(alg)
        if op in ("encrypt", "wrapkey"):
            return {"kid": kid, "value": b64u(version.private.public_key().encrypt(value, pad))}
        try:
            return {"kid": kid, "value": b64u(version.private.decrypt(value, pad))}
        except ValueError:
            raise VaultError(400, "BadParameter", "The parameter is incorrect.") from None

    def _sign(self, version: Version, alg: str, digest: bytes) -> bytes:
        if alg in EC_SIGN:
            crv, size = EC_SIGN[alg]
            if version.crv != crv or len(digest) != size:
                raise VaultError(400, "BadParameter",
                                 f"Algorithm {alg} or digest length is not valid for this key")
            hashed = {32: hashes.SHA256(), 48: hashes.SHA384(), 64: hashes.SHA512()}[size]
            der = version.private.sign(digest, ec.ECDSA(Prehashed(hashed)))
            r, s = decode_dss_signature(der)
            width = CURVES[crv][1]
            return r.to_bytes(width, "big") + s.to_bytes(width, "big")
        if version.kty not in ("RSA", "RSA-HSM") or alg not in ("PS256", "RS256"):
            raise VaultError(400, "BadParameter", f"Algorithm {alg} is not valid for this key")
        if len(digest) != 32:
            raise VaultError(400, "BadParameter", "Invalid digest length for SHA-256")
        pad = (padding.PSS(padding.MGF1(hashes.SHA256()), 32) if alg == "PS256"
               else padding.PKCS1v15())
        return version.private.sign(digest, pad, Prehashed(hashes.SHA256()))

    # -- JSON shapes ------------------------------------------------------------------
    def _kid(self, name: str, version: Version) -> str:
        return f"{self.url}/keys/{name}/{version.version}"

    def _attributes(self, version: Version) -> dict[str, Any]:
        return {"enabled": version.enabled, "created": version.created,
                "updated": version.updated, "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": RETENTION_DAYS, "exportable": False}

    def _jwk(self, name: str, version: Version) -> dict[str, Any]:
        jwk: dict[str, Any] = {"kid": self._kid(name, version), "kty": version.kty,
                               "key_ops": version.key_ops}
        numbers = version.private.public_key().public_numbers()
        if isinstance(numbers, rsa.RSAPublicNumbers):
            jwk.update(n=b64u(_int_bytes(numbers.n)), e=b64u(_int_bytes(numbers.e)))
        else:
            width = CURVES[version.crv][1]
            jwk.update(crv=version.crv, x=b64u(numbers.x.to_bytes(width, "big")),
                       y=b64u(numbers.y.to_bytes(width, "big")))
        return jwk

    def _bundle(self, name: str, version: Version) -> dict[str, Any]:
        return {"key": self._jwk(name, version), "attributes": self._attributes(version),
                "tags": version.tags}

    def _item(self, name: str, version: Version) -> dict[str, Any]:
        return {"kid": self._kid(name, version), "attributes": self._attributes(version),
                "tags": version.tags}

    def _deleted_bundle(self, name: str, deleted: Deleted) -> dict[str, Any]:
        return {"recoveryId": f"{self.url}/deletedkeys/{name}", "deletedDate": deleted.deleted,
                "scheduledPurgeDate": deleted.purge,
                **self._bundle(name, deleted.versions[-1])}


def _oaep(alg: str) -> padding.OAEP:
    algorithm = {"RSA-OAEP": hashes.SHA1(), "RSA-OAEP-256": hashes.SHA256()}.get(alg)
    if algorithm is None:
        raise VaultError(400, "BadParameter", f"Algorithm {alg} is not valid for this key")
    return padding.OAEP(padding.MGF1(algorithm), algorithm, None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_emulator(directory: Path) -> KeyVaultEmulator:
    emulator = KeyVaultEmulator(directory)
    emulator.start()
    return emulator


def emulator_options(emulator: KeyVaultEmulator) -> dict[str, str]:
    """Provider options for the emulator: a static token, its CA, no resource check."""
    return {"AZURE_VAULT_URL": emulator.url, "AZURE_ACCESS_TOKEN": "qkms-test-token",
            "AZURE_CA_BUNDLE": str(emulator.ca_file),
            "AZURE_VERIFY_CHALLENGE_RESOURCE": "false", "AZURE_TIMEOUT": "10"}


@pytest.fixture(scope="session")
def azure_vault(tmp_path_factory) -> Iterator[KeyVaultEmulator]:
    try:
        import azure.keyvault.keys  # noqa: F401
    except ImportError:
        from tests.support.servers import require_server
        require_server("Azure Key Vault emulator",
                       "azure-keyvault-keys is missing: pip install 'qkms[azure]'")
    emulator = start_emulator(tmp_path_factory.mktemp("keyvault"))
    yield emulator
    emulator.close()


@pytest.fixture
def azure_options(azure_vault: KeyVaultEmulator) -> dict[str, str]:
    return emulator_options(azure_vault)

