"""HASHICORP_VAULT's client: its options, and one hvac call under a deadline with Vault's
failures as qkms errors (``TransitCalls``, which ``vault.VaultProvider`` is built on).

Options come from the environment (``VAULT_ADDR``...) or a KeyPolicy's settings
(``address``...), the policy first.  The token never appears in errors or logs.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import hvac
import requests
from hvac import exceptions as vault_errors

from qkms.errors import (
    InvalidInputError,
    KeyNotFoundError,
    KeyStateError,
    ProviderUnavailableError,
)
from qkms.model.enums import ProviderType


def _option(options: dict[str, str], env: str, setting: str) -> str | None:
    """A KeyPolicy setting (``address``) wins over the operator's environment
    (``VAULT_ADDR``): the registry merges both into the options, and the policy is the
    more specific of the two."""
    return options.get(setting) or options.get(env) or None


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text.strip().removesuffix("s"))
    except ValueError:
        raise InvalidInputError(name, f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise InvalidInputError(name, "must be positive")
    return value


@dataclass(frozen=True)
class VaultOptions:
    address: str
    token: str = field(repr=False)
    mount: str = "transit"
    wrap_key: str = "qkms-wrap"
    timeout: float = 5.0
    namespace: str | None = None
    verify: bool | str = True

    @classmethod
    def from_options(cls, options: dict[str, str]) -> VaultOptions:
        """Environment names (``VAULT_ADDR``...) or KeyPolicy settings (``address``...)."""
        address = _option(options, "VAULT_ADDR", "address")
        token = _option(options, "VAULT_TOKEN", "token")
        if not address:
            raise InvalidInputError("VAULT_ADDR", "is required for HASHICORP_VAULT")
        if not token:
            raise InvalidInputError("VAULT_TOKEN", "is required for HASHICORP_VAULT "
                                    "(from the environment or the credentials Secret)")
        verify: bool | str = _option(options, "VAULT_CACERT", "caCert") or True
        if (_option(options, "VAULT_SKIP_VERIFY", "skipVerify") or "").lower() in ("1", "true"):
            verify = False
        return cls(
            address=address.rstrip("/"), token=token,
            mount=(_option(options, "VAULT_MOUNT_PATH", "mountPath") or "transit").strip("/"),
            wrap_key=_option(options, "VAULT_WRAP_KEY", "wrapKey") or "qkms-wrap",
            timeout=_seconds(_option(options, "VAULT_CLIENT_TIMEOUT", "timeout") or "5",
                             "VAULT_CLIENT_TIMEOUT"),
            namespace=_option(options, "VAULT_NAMESPACE", "namespace"), verify=verify)


def _vault_reason(exc: vault_errors.VaultError) -> str:
    """The first line of Vault's first error, without hvac's method and URL suffix."""
    text = " ".join(str(e) for e in (exc.errors or [])) or type(exc).__name__
    lines = [line.strip(" *\t") for line in text.splitlines()]
    lines = [line for line in lines if line and not line.endswith("error occurred:")]
    return (lines[0] if lines else text)[:200]


def _network_reason(exc: requests.RequestException, timeout: float) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused" if "refused" in str(exc).lower() else "connection failed"
    return type(exc).__name__


def transit_client(options: VaultOptions) -> hvac.Client:
    return hvac.Client(url=options.address, token=options.token, timeout=options.timeout,
                       verify=options.verify, namespace=options.namespace)


class TransitCalls:
    """The hvac client built from the options, and ``call``: one Vault call under the
    deadline, its failures as qkms errors (``_translate``), some tolerated on request."""

    type: ClassVar[ProviderType]

    def __init__(self, options: VaultOptions) -> None:
        self.options = options
        self.client = transit_client(options)

    def unavailable(self, reason: str) -> ProviderUnavailableError:
        return ProviderUnavailableError(f"{self.type.value} at {self.options.address}: {reason}")

    async def call(self, fn: Callable[..., Any], *args: Any, key_id: str | None = None,
                   bad_request: builtins.type[Exception] | None = None,
                   tolerate: Callable[[vault_errors.VaultError], bool] | None = None,
                   **kwargs: Any) -> Any:
        """Run one hvac call in a thread under the deadline, mapping failures to qkms errors.

        ``key_id`` turns "not found" into ``KeyNotFoundError``; ``bad_request`` is raised
        for other 400 answers (a failed decryption, say); ``tolerate`` returns None instead
        of raising for the errors it accepts.
        """
        try:
            async with asyncio.timeout(self.options.timeout):  # no extra task, unlike wait_for
                return await asyncio.to_thread(fn, *args, **kwargs)
        except TimeoutError:
            raise self.unavailable(f"no answer within {self.options.timeout:g}s") from None
        except requests.RequestException as exc:
            raise self.unavailable(_network_reason(exc, self.options.timeout)) from None
        except vault_errors.VaultError as exc:
            if tolerate is not None and tolerate(exc):
                return None
            raise self._translate(exc, key_id, bad_request) from None

    def _translate(self, exc: vault_errors.VaultError, key_id: str | None,
                   bad_request: builtins.type[Exception] | None) -> Exception:
        reason = _vault_reason(exc)
        if "soft-deleted" in reason:  # a 400 or a 500, depending on the endpoint
            return KeyStateError(f"Key version not usable: {key_id} is pending deletion "
                                 "(soft-deleted in Vault)")
        if isinstance(exc, vault_errors.Forbidden | vault_errors.Unauthorized):
            return self.unavailable("permission denied: check the token and its policy")
        if isinstance(exc, vault_errors.InvalidPath | vault_errors.InvalidRequest):
            if "no handler for route" in reason:
                return self.unavailable(f"no transit engine at {self.options.mount!r}")
            if key_id and (isinstance(exc, vault_errors.InvalidPath) or "not found" in reason):
                return KeyNotFoundError(key_id)
            if "less than the minimum" in reason:
                return KeyStateError(f"Key version not usable: Vault no longer allows {key_id} "
                                     f"to sign or encrypt ({reason})")
            if bad_request is not None and isinstance(exc, vault_errors.InvalidRequest):
                return bad_request(reason)
            return self.unavailable(f"request refused: {reason}")
        return self.unavailable(f"{reason}")
