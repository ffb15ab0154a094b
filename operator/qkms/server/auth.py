"""Who is calling, and may they do this: Kubernetes authentication and RBAC.

In a cluster a bearer ServiceAccount token is checked with a TokenReview, and
each operation is a verb (``sign``, ``encrypt``, ...) on
``managedkeys.qkms.io`` checked with a SubjectAccessReview, so an ordinary
Role grants key use (``kubectl create role signer --verb=sign
--resource=managedkeys.qkms.io``).  Standalone mode reads a tokens file with
the same model.  Answers are cached for ``ttl`` seconds (default 10) so the
API server is not asked on every request; a cache entry is keyed by a
digest of the token, never the token itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from qkms.errors import AuthUnavailableError, InvalidInputError, Unauthenticated

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

class KubeAuth:
    """TokenReview and SubjectAccessReview through the official client, cached."""

    def __init__(self, api: Any, ttl: float = 10.0, audiences: list[str] | None = None) -> None:
        from kubernetes import client

        self.authn = client.AuthenticationV1Api(api)
        self.authz = client.AuthorizationV1Api(api)
        self.audiences = audiences or []
        self._identities = TtlCache(ttl)
        self._decisions = TtlCache(ttl)

    async def authenticate(self, token: str) -> Identity:
        digest = token_digest(token)
        cached = self._identities.get(digest)
        if cached is not None:
            if isinstance(cached, str):
                raise Unauthenticated(cached)
            return cached
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": self.audiences}}
        review = await _review(self.authn.create_token_review, body, "TokenReview")
        status = review.status
        if not status or not status.authenticated:
            reason = "token rejected by the Kubernetes API"
            self._identities.put(digest, reason)
            raise Unauthenticated(reason)
        identity = Identity(status.user.username, tuple(status.user.groups or ()),
                            status.user.uid or "")
        self._identities.put(digest, identity)
        return identity

    async def allowed(self, identity: Identity, verb: str, namespace: str, name: str) -> bool:
        key = (identity.username, identity.groups, verb, namespace, name)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": identity.username, "groups": list(identity.groups),
                         "uid": identity.uid,
                         "resourceAttributes": {"group": "qkms.io", "resource": "managedkeys",
                                                "verb": verb, "namespace": namespace,
                                                "name": name}}}
        review = await _review(self.authz.create_subject_access_review, body,
                               "SubjectAccessReview")
        decision = bool(review.status and review.status.allowed)
        self._decisions.put(key, decision)
        return decision


async def _review(create: Any, body: dict[str, Any], kind: str) -> Any:
    """Ask the API server; its failure is a 503 (``auth_unavailable``), never a 500 or a
    silent allow. The exception text may hold the token, so it is not passed on."""
    try:
        return await asyncio.to_thread(create, body, _request_timeout=5)
    except Exception as exc:  # ApiException, urllib3 errors, timeouts
        status = getattr(exc, "status", None) or type(exc).__name__
        raise AuthUnavailableError(f"Kubernetes API could not answer a {kind} ({status})") \
            from None


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
        self.path = Path(path) if path else None
        self.clock = clock or (lambda: datetime.now(UTC))
        data = yaml.safe_load(self.path.read_text()) if self.path else {}
        data = data or {}
        self.tokens: list[tuple[str, Identity, datetime | None]] = []
        self.grants: dict[str, list[Grant]] = {}
        for i, entry in enumerate(data.get("tokens") or []):
            field = f"tokens[{i}]"
            sa = _service_account(entry, field)
            digest = entry.get("sha256") or (token_digest(str(entry["token"]))
                                             if entry.get("token") else None)
            if not digest:
                raise InvalidInputError(field, "needs sha256 or token")
            expires = entry.get("expires")
            if isinstance(expires, str):
                expires = datetime.fromisoformat(expires.replace("Z", "+00:00"))
            self.tokens.append((str(digest), Identity(sa), expires))
        for i, entry in enumerate(data.get("grants") or []):
            field = f"grants[{i}]"
            sa = _service_account(entry, field)
            self.grants.setdefault(sa, []).append(Grant(
                str(entry.get("namespace") or ""), frozenset(entry.get("verbs") or ()),
                frozenset(entry.get("keys") or ("*",))))

    @classmethod
    def empty(cls) -> TokensFile:
        """No tokens: every key operation answers 401 (health and metrics still work)."""
        return cls(None)

    async def authenticate(self, token: str) -> Identity:
        digest = token_digest(token)
        for known, identity, expires in self.tokens:
            if hmac.compare_digest(known, digest):
                if expires is not None and self.clock() >= expires:
                    raise Unauthenticated("token expired")
                return identity
        raise Unauthenticated("unknown token")

    async def allowed(self, identity: Identity, verb: str, namespace: str, name: str) -> bool:
        return any(g.namespace == namespace and verb in g.verbs
                   and ("*" in g.keys or name in g.keys)
                   for g in self.grants.get(identity.username, ()))


def _service_account(entry: Mapping[str, Any], field: str) -> str:
    value = str(entry.get("serviceAccount") or "")
    if value.count("/") != 1:
        raise InvalidInputError(f"{field}.serviceAccount", "must be NAMESPACE/NAME")
    namespace, name = value.split("/")
    return f"{SA_PREFIX}{namespace}:{name}"
