"""AZURE_KEY_VAULT's client: options, credentials, and one SDK call under a deadline with
Key Vault's failures as qkms errors (``KeyVaultCalls``, which ``azure.AzureKeyVaultProvider``
is built on).

Credentials, in order: ``AZURE_ACCESS_TOKEN`` (a bearer token used as is),
``AZURE_TENANT_ID`` + ``AZURE_CLIENT_ID`` + ``AZURE_CLIENT_SECRET`` (a service principal),
else ``DefaultAzureCredential`` (workload identity, managed identity).  Errors name the
vault URL only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient

from qkms.crypto.base import InvalidCiphertext
from qkms.errors import InvalidInputError, KeyNotFoundError, ProviderUnavailableError

T = TypeVar("T")
_CLIENTS_MAX = 1024


def option(options: dict[str, str], env: str, setting: str) -> str | None:
    """A KeyPolicy setting (camelCase) wins over the environment variable."""
    value = options.get(setting) or options.get(env)
    return value.strip() if isinstance(value, str) and value.strip() else None


def flag(options: dict[str, str], env: str, setting: str, default: bool) -> bool:
    value = option(options, env, setting)
    if value is None:
        return default
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise InvalidInputError(env, f"{value!r} is not a boolean (true/false)")
    return value.lower() in ("true", "1", "yes")


class StaticTokenCredential:
    """A bearer token issued elsewhere, used as is (tests, or a token a sidecar refreshes)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)

    def __repr__(self) -> str:
        return "StaticTokenCredential(<redacted>)"


def credential_for(options: dict[str, str]) -> Any:
    token = options.get("AZURE_ACCESS_TOKEN")
    if token:
        return StaticTokenCredential(token)
    tenant = option(options, "AZURE_TENANT_ID", "tenantId")
    client_id = option(options, "AZURE_CLIENT_ID", "clientId")
    secret = options.get("AZURE_CLIENT_SECRET")
    if tenant and client_id and secret:
        from azure.identity import ClientSecretCredential
        return ClientSecretCredential(tenant, client_id, secret)
    from azure.identity import DefaultAzureCredential
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def _status(exc: AzureError) -> str:
    """``HTTP 503 ServiceUnavailable``: status and Key Vault error code, nothing else."""
    code = getattr(getattr(exc, "error", None), "code", None)
    status = getattr(exc, "status_code", None)
    return " ".join(str(p) for p in (f"HTTP {status}" if status else None, code) if p) \
        or type(exc).__name__


class KeyVaultCalls:
    """One Key Vault call under the deadline; needs ``client`` (a ``KeyClient``), ``vault_url``
    and ``timeout`` set."""

    client: KeyClient
    vault_url: str
    timeout: float
    _crypto: dict[tuple[str, str], CryptographyClient]

    def unavailable(self, reason: str) -> ProviderUnavailableError:
        return ProviderUnavailableError(f"AZURE_KEY_VAULT at {self.vault_url}: {reason}")

    async def call(self, fn: Callable[[], T], *, key_id: str | None = None,
                   bad_input: bool = False) -> T:
        """``fn()`` in a worker thread within the timeout, its errors made qkms errors.

        A 404 is a missing key (when the call is about one); with ``bad_input`` a 400
        means the ciphertext was refused; everything else (no connection, timeouts,
        401/403, 429, 5xx) means the vault cannot serve us.
        """
        try:
            async with asyncio.timeout(self.timeout):  # cheaper than wait_for: no extra task
                return await asyncio.to_thread(fn)
        except TimeoutError:
            raise self.unavailable(f"no answer within {self.timeout:g}s") from None
        except ResourceNotFoundError:
            if key_id is not None:
                raise KeyNotFoundError(key_id) from None
            raise self.unavailable("not found (404)") from None
        except ClientAuthenticationError as exc:
            raise self.unavailable(f"authentication failed ({_status(exc)})") from None
        except HttpResponseError as exc:
            if bad_input and exc.status_code == 400:
                raise InvalidCiphertext("Key Vault refused the ciphertext") from None
            raise self.unavailable(_status(exc)) from None
        except AzureError as exc:
            raise self.unavailable(f"cannot reach the vault ({type(exc).__name__})") from None

    def crypto(self, name: str, version: str) -> CryptographyClient:
        """A CryptographyClient per key version, sharing the KeyClient's connection pool."""
        client = self._crypto.get((name, version))
        if client is None:
            if len(self._crypto) >= _CLIENTS_MAX:
                self._crypto.clear()
            client = self.client.get_cryptography_client(name, key_version=version)
            self._crypto[(name, version)] = client
        return client
