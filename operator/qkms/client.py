"""A Python client for the qkms data plane, for workloads.

In a pod, the client reads an audience-bound token and the data plane's CA from a
projected volume at /var/run/secrets/qkms (``token``: a ServiceAccount token for the
audience ``qkms``; ``ca.crt``: from the ConfigMap ``qkms-ca``; see the README), or from
``QKMS_TOKEN_FILE`` and ``QKMS_CA_FILE``. Plain ``http://`` is refused except to loopback
(``qkms serve`` on 127.0.0.1), so a token is never sent in the clear.

```python
async with QkmsClient("https://qkms.qkms-system:8443") as kms:
    sig = await kms.use_key("payments/user-service-signing", "SIGN", b"message")
    assert await kms.use_key("payments/user-service-signing", "VERIFY", b"message",
                             signature=sig.signature)
```

Errors come back as the same ``QkmsError`` classes the service raises, so
``except KeyRevokedError`` works the same in-process and over HTTP.
"""

from __future__ import annotations

import base64
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from qkms import errors
from qkms.config import ClientConfig

SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
PROJECTED = Path("/var/run/secrets/qkms")  # token (audience qkms) and ca.crt, projected


def default_token_file() -> Path | None:
    """``QKMS_TOKEN_FILE``, else the projected qkms token, else the pod's ServiceAccount
    token (which a data plane that wants the qkms audience refuses)."""
    given = ClientConfig.from_env().token_file
    if given:
        return given
    return next((p for p in (PROJECTED / "token", SA_TOKEN) if p.exists()), None)


def default_ca_file() -> Path | None:
    """``QKMS_CA_FILE``, else the projected ``qkms-ca`` bundle; None: the system's CAs."""
    given = ClientConfig.from_env().ca_file
    if given:
        return given
    return PROJECTED / "ca.crt" if (PROJECTED / "ca.crt").exists() else None


def _check_scheme(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "http":
        host = parts.hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise errors.InvalidInputError(
                "url", f"plain HTTP only to loopback, not {host!r}: the data plane is https "
                       "in a cluster")
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
        """With neither `token` nor `token_file`, the token of :func:`default_token_file`;
        without `ca_file`, :func:`default_ca_file`."""
        _check_scheme(url)
        self.url = url.rstrip("/")
        self._token = token
        if token is None and token_file is None:
            token_file = default_token_file()
        self._token_file = Path(token_file) if token_file else None
        if ca_file is None and url.startswith("https:"):
            ca_file = default_ca_file()
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
                      low_s: bool | None = None, rsa_padding: str | None = None) -> Any:
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
        if rsa_padding is not None:
            body["rsa_padding"] = rsa_padding
        return _decode(await self.call(key, op, body), op)

    async def batch(self, key: str, operation: str, items: list[dict[str, Any]]) -> list[Any]:
        """Vault-style ``batch_input``: items are request bodies; results per item."""
        answer = await self.call(key, operation.lower(), {"batch_input": items})
        return [r if "error" in r else _decode(r, operation.lower())
                for r in answer["batch_results"]]
