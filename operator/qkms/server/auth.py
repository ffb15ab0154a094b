"""Who is calling, and may they do this: the data plane's authentication model.

Each operation is a verb (``sign``, ``encrypt``, ...) on ``managedkeys.qkms.io``, so in a
cluster an ordinary Role grants key use (``kubectl create role signer --verb=sign
--resource=managedkeys.qkms.io``): there ``qkms.k8s.auth.KubeAuth`` asks the API server
(TokenReview, SubjectAccessReview). Standalone mode reads a tokens file with the same
model (``TokensFile``, here). Answers are cached (``TtlCache``) keyed by a digest of the
token, never the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from qkms.errors import InvalidInputError, Unauthenticated

SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class Identity:
    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""

    @property
    def namespace(self) -> str | None:
        """The ServiceAccount's namespace, or None for a non-ServiceAccount user."""
        if self.username.startswith(SA_PREFIX):
            return self.username[len(SA_PREFIX):].split(":", 1)[0]
        return None

    @property
    def actor(self) -> dict[str, str]:
        kind = "SERVICE_ACCOUNT" if self.namespace else "USER"
        return {"type": kind, "id": self.username}


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Identity: ...


class Authorizer(Protocol):
    async def allowed(self, identity: Identity, verb: str, namespace: str, name: str) -> bool: ...


class TtlCache:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._data: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        hit = self._data.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    def put(self, key: Any, value: Any) -> None:
        if len(self._data) > 100_000:  # bounded: drop everything rather than grow forever
            self._data.clear()
        self._data[key] = (time.monotonic() + self.ttl, value)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- Kubernetes ------------------------------------------------------------------------

# -- standalone tokens file ------------------------------------------------------------

@dataclass(frozen=True)
class Grant:
    namespace: str
    verbs: frozenset[str]
    keys: frozenset[str]  # "*" for every key in the namespace


class TokensFile:
    """Standalone authentication and authorization from a YAML file.

    ```yaml
    tokens:
      - serviceAccount: payments/checkout     # becomes system:serviceaccount:payments:checkout
        sha256: 9f86d0...                      # or `token: ...` (plain; fine for dev only)
        expires: 2027-01-01T00:00:00Z          # optional
    grants:                                    # as RBAC Roles: verbs on managedkeys
      - serviceAccount: payments/checkout
        namespace: payments
        verbs: [sign, verify]
        keys: ["*"]
    ```
    """

    def __init__(self, path: Path | str | None, clock: Any = None) -> None:
        """Read and check the whole file now: a bad entry is refused at load time, naming its
        field (``tokens[2].expires``), never at the first request that uses it."""
        self.path = Path(path) if path else None
        self.clock = clock or (lambda: datetime.now(UTC))
        data = yaml.safe_load(self.path.read_text()) if self.path else {}
        data = data or {}
        if not isinstance(data, dict):
            raise InvalidInputError("tokens file", "must be a mapping with tokens and grants")
        unknown = sorted(set(data) - {"tokens", "grants"})
        if unknown:
            raise InvalidInputError(str(unknown[0]), "unknown field (tokens, grants)")
        self.tokens: list[tuple[str, Identity, datetime | None]] = []
        self.grants: dict[str, list[Grant]] = {}
        for i, entry in enumerate(_entries(data, "tokens")):
            field = f"tokens[{i}]"
            _known_fields(entry, field, {"serviceAccount", "sha256", "token", "expires"})
            sa = _service_account(entry, field)
            if entry.get("sha256") is not None:
                digest = str(entry["sha256"]).strip().lower()
                if not _SHA256.fullmatch(digest):
                    raise InvalidInputError(f"{field}.sha256", "must be 64 hex digits")
            elif entry.get("token"):
                digest = token_digest(str(entry["token"]))
            else:
                raise InvalidInputError(field, "needs sha256 or token")
            expires = _expiry(entry.get("expires"), f"{field}.expires")
            self.tokens.append((digest, Identity(sa), expires))
        for i, entry in enumerate(_entries(data, "grants")):
            field = f"grants[{i}]"
            _known_fields(entry, field, {"serviceAccount", "namespace", "verbs", "keys"})
            sa = _service_account(entry, field)
            namespace = entry.get("namespace")
            if not isinstance(namespace, str) or not namespace:
                raise InvalidInputError(f"{field}.namespace", "must be a namespace name")
            self.grants.setdefault(sa, []).append(Grant(
                namespace, _strings(entry.get("verbs") or [], f"{field}.verbs"),
                _strings(entry.get("keys") if entry.get("keys") is not None else ["*"],
                         f"{field}.keys")))

    @classmethod
    def empty(cls) -> TokensFile:
        """No tokens: every key operation answers 401 (health and metrics still work)."""
        return cls(None)

    async def authenticate(self, token: str) -> Identity:
        digest = token_digest(token)
        for known, identity, expires in self.tokens:
            if hmac.compare_digest(known, digest):
                if expires is not None and self.clock() >= expires:
                    refused = Unauthenticated("token expired")
                    refused.actor = identity.actor  # type: ignore[attr-defined] # audited as it
                    raise refused
                return identity
        raise Unauthenticated("unknown token")

    async def allowed(self, identity: Identity, verb: str, namespace: str, name: str) -> bool:
        return any(g.namespace == namespace and verb in g.verbs
                   and ("*" in g.keys or name in g.keys)
                   for g in self.grants.get(identity.username, ()))


_SHA256 = re.compile(r"[0-9a-f]{64}")
_SA_PART = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def _entries(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = data.get(key) or []
    if not isinstance(items, list):
        raise InvalidInputError(key, "must be a list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInputError(f"{key}[{i}]", "must be a mapping")
    return items


def _known_fields(entry: Mapping[str, Any], field: str, allowed: set[str]) -> None:
    unknown = sorted(str(k) for k in set(entry) - allowed)
    if unknown:
        raise InvalidInputError(f"{field}.{unknown[0]}",
                                f"unknown field ({', '.join(sorted(allowed))})")


def _strings(value: Any, field: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidInputError(field, "must be a list of names")
    return frozenset(value)


def _expiry(value: Any, field: str) -> datetime | None:
    """An expiry as an aware UTC moment.  YAML reads ``2020-01-01`` as a date and
    ``2020-01-01 00:00:00`` as a naive date-time; a date means midnight UTC, a date-time
    must say its zone (``Z`` or ``+01:00``) so that no one has to guess."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInputError(field, f"{value!r} is not an ISO 8601 date or date-time"
                                    ) from None
        if len(value.strip()) == 10:  # a date written as a string
            return moment.replace(tzinfo=UTC)
    else:
        raise InvalidInputError(field, "must be an ISO 8601 date or date-time")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInputError(field, f"{moment.isoformat(sep=' ')} has no time zone: "
                                       "write it as 2027-01-01T00:00:00Z")
    return moment


def _service_account(entry: Mapping[str, Any], field: str) -> str:
    value = entry.get("serviceAccount")
    parts = value.split("/") if isinstance(value, str) else []
    if len(parts) != 2 or not all(_SA_PART.fullmatch(p) for p in parts):
        raise InvalidInputError(f"{field}.serviceAccount", "must be NAMESPACE/NAME")
    return f"{SA_PREFIX}{parts[0]}:{parts[1]}"
