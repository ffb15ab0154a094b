"""The data plane's authentication in a cluster: a bearer ServiceAccount token checked with
a TokenReview (audience-bound), and each operation a verb on ``managedkeys.qkms.io``
checked with a SubjectAccessReview. Answers are cached for ``ttl`` seconds (default 10)
so the API server is not asked on every request; a cache entry is keyed by a digest of
the token, never the token itself. The model and standalone's tokens file are in
``qkms.server.auth``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from qkms.errors import AuthUnavailableError, Unauthenticated
from qkms.server.auth import Identity, TtlCache, token_digest


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
