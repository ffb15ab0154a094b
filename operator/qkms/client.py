"""A Python client for the qkms data plane, for workloads.

```python
async with QkmsClient("https://qkms.qkms-system:8443", token_file=SA_TOKEN) as kms:
    sig = await kms.use_key("payments/user-service-signing", "SIGN", b"message")
    assert await kms.use_key("payments/user-service-signing", "VERIFY", b"message",
                             signature=sig.signature)
```

Errors come back as the same ``QkmsError`` classes the service raises, so
``except KeyRevokedError`` works the same in-process and over HTTP.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from qkms import errors

SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
_CODES: dict[str, type[errors.QkmsError]] = {
    cls.code: cls for cls in (
        errors.InvalidInputError, errors.OperationNotAllowedError, errors.KeyStateError,
        errors.KeyRevokedError, errors.IntegrityError, errors.DecryptionError,
        errors.ProviderUnavailableError, errors.AuditStorageError, errors.UnsupportedAlgorithmError)
}


@dataclass(frozen=True)
class Result:
    key_id: str
    version: int
    algorithm: str
    signature: bytes | None = None
    ciphertext: str | bytes | None = None
    plaintext: bytes | None = field(default=None, repr=False)
    shared_secret: bytes | None = field(default=None, repr=False)
    derived_key: bytes | None = field(default=None, repr=False)
    recovery_id: int | None = None


def _decode(item: dict[str, Any], operation: str) -> Any:
    if "valid" in item:
        return item["valid"]
    binary = {k: base64.b64decode(item[k]) for k in
              ("signature", "plaintext", "shared_secret", "derived_key") if k in item}
    ciphertext = item.get("ciphertext")
    if ciphertext is not None and operation == "encapsulate":
        ciphertext = base64.b64decode(ciphertext)
    return Result(item["key_id"], item["version"], item["algorithm"], ciphertext=ciphertext,
                  recovery_id=item.get("recovery_id"), **binary)


def _raise(status: int, body: Any) -> None:
    error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
    code, message = error.get("code", "http_error"), error.get("message", f"HTTP {status}")
    if code == "key_not_found":
        raise errors.KeyNotFoundError(message.removeprefix("Key not found: "))
    kind = _CODES.get(code)
    if kind is not None and issubclass(kind, errors.InvalidInputError):
        field_name = error.get("field", "request")
        raise kind(field_name, message.removeprefix(f"{field_name}: "))
    if kind is errors.ProviderUnavailableError:
        raise errors.ProviderUnavailableError(message.removeprefix("KMS provider unavailable: "))
    exc = (kind or errors.QkmsError)(message) if kind is not errors.AuditStorageError \
        else errors.AuditStorageError()
    exc.status = status  # type: ignore[attr-defined]
    raise exc


class QkmsClient:
    def __init__(self, url: str, *, token: str | None = None,
                 token_file: Path | str | None = None, ca_file: Path | str | None = None,
                 cert: tuple[str, str] | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._token_file = Path(token_file) if token_file else None
        context = None
        if ca_file or cert:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if cert:
                context.load_cert_chain(*cert)
        self._connector = aiohttp.TCPConnector(ssl=context) if context else None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _bearer(self) -> str:
        # Re-read the file each time: projected ServiceAccount tokens rotate.
        token = self._token_file.read_text().strip() if self._token_file else self._token
        return f"Bearer {token}" if token else ""

    async def __aenter__(self) -> QkmsClient:
        self._session = aiohttp.ClientSession(connector=self._connector, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, key: str, operation: str, body: dict[str, Any]) -> Any:
        namespace, _, name = key.partition("/")
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=self._connector,
                                                  timeout=self._timeout)
        headers = {"Authorization": self._bearer()} if self._bearer() else {}
        async with self._session.post(f"{self.url}/v1/keys/{namespace}/{name}:{operation}",
                                      json=body, headers=headers) as rsp:
            answer = await rsp.json(content_type=None)
            if rsp.status != 200:
                _raise(rsp.status, answer)
            return answer

    async def use_key(self, key: str, operation: str, data: bytes | str = b"", *,
                      signature: bytes | None = None, context: bytes | str | None = None,
                      length: int | None = None, signature_format: str | None = None,
                      prehashed: bool = False, recovery_id: bool = False,
                      low_s: bool | None = None) -> Any:
        """The seed's ``useKey``, over HTTP: ``key`` is ``namespace/name``.  SIGN and VERIFY
        take the signature options of ``qkms.signing``."""
        op = operation.lower()
        body: dict[str, Any] = {}
        raw = data.encode() if isinstance(data, str) else data
        if op == "decrypt":
            body["ciphertext"] = data.ciphertext if isinstance(data, Result) else (
                data.decode() if isinstance(data, bytes) else data)
        elif op == "decapsulate":
            body["ciphertext"] = base64.b64encode(raw).decode()
        elif op not in ("encapsulate", "derive"):
            body["input"] = base64.b64encode(raw).decode()
        if signature is not None:
            body["signature"] = base64.b64encode(signature).decode()
        if context is not None:
            ctx = context.encode() if isinstance(context, str) else context
            body["context"] = base64.b64encode(ctx).decode()
        if length is not None:
            body["length"] = length
        if signature_format is not None:
            body["signature_format"] = signature_format
        if prehashed:
            body["prehashed"] = True
        if recovery_id:
            body["recovery_id"] = True
        if low_s is not None:
            body["low_s"] = low_s
        return _decode(await self.call(key, op, body), op)

    async def batch(self, key: str, operation: str, items: list[dict[str, Any]]) -> list[Any]:
        """Vault-style ``batch_input``: items are request bodies; results per item."""
        answer = await self.call(key, operation.lower(), {"batch_input": items})
        return [r if "error" in r else _decode(r, operation.lower())
                for r in answer["batch_results"]]
