"""A small async Kubernetes REST client for the tests: what kubectl does, by HTTP.

The tests talk to the API server as a user would, through its REST API: create, get,
merge-patch, server-side apply, list, watch, delete, with names resolved through
discovery (``'mk'``, ``'ManagedKey'``, ``'managedkeys.qkms.io'``, ``'v1/secrets'``).
It is deliberately independent of the code under test (no kopf, no kubernetes client).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

Body = dict[str, Any]
T = TypeVar("T")


class KubeError(Exception):
    """A non-2xx answer from the API; `body` is the Kubernetes ``Status`` when there is one."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body
        self.retry_after = 0.0


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        path = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if namespace and self.namespaced:
            path += f"/namespaces/{namespace}"
        path += f"/{self.plural}"
        return path + "".join(f"/{part}" for part in (name, subresource) if part)


async def eventually(probe: Callable[[], Awaitable[T] | T], *, timeout: float = 15.0,
                     interval: float = 0.1, what: str = "the condition",
                     context: Callable[[], str] | None = None) -> T:
    """Poll `probe` (sync or async) until it returns something truthy, or time out with a
    useful message. API and connection errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
        except (KubeError, aiohttp.ClientError, OSError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            extra = f"; last error: {last_error!r}" if last_error else ""
            details = f"\n{context()}" if context else ""
            raise TimeoutError(f"{what} not reached within {timeout}s{extra}{details}")
        await asyncio.sleep(interval)


class KubeClient:
    """REST calls against one API server with one identity (client certificate or token)."""

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | bool | None = None,
                 token: str | None = None) -> None:
        self.url = url
        self.ssl_context = ssl_context
        self.token = token
        self._session: aiohttp.ClientSession | None = None
        self._discovery: list[tuple[Resource, set[str]]] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """No keep-alive: the server may restart between calls."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(force_close=True, ssl=self.ssl_context
                                             if self.ssl_context is not None else False)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: Mapping[str, str] | None = None,
                      content_type: str = "application/json", timeout: float = 30) -> Any:
        """One API call; raises :class:`KubeError` on non-2xx. A 429 (the server asks to
        come back: a CRD's storage still initialising, or priority-and-fairness) is retried
        after the Retry-After it names, for up to `timeout` seconds, as client-go does."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self._request_once(method, path, body, params, content_type,
                                                 timeout)
            except KubeError as exc:
                if exc.status != 429 or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(min(exc.retry_after, 1.0))

    async def _request_once(self, method: str, path: str, body: Any,
                            params: Mapping[str, str] | None, content_type: str,
                            timeout: float) -> Any:
        data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        async with self.session.request(
                method, self.url + path, data=data, params=params,
                headers=self._headers(content_type if data is not None else None),
                timeout=aiohttp.ClientTimeout(total=timeout)) as rsp:
            text = await rsp.text()
            try:
                answer = json.loads(text) if text else None
            except ValueError:
                answer = text
            if rsp.status >= 400:
                error = KubeError(rsp.status, answer)
                error.retry_after = float(rsp.headers.get("Retry-After") or 0.2)
                raise error
            return answer

    # -- names -------------------------------------------------------------------------------

    async def resolve(self, resource: str) -> Resource:
        """``'v1/configmaps'`` or ``'qkms.io/v1alpha1/managedkeys'`` as given; ``'cm'``,
        ``'ConfigMap'``, ``'managedkeys'``, ``'mk.qkms.io'`` through discovery, as kubectl
        does (the core group first)."""
        if resource.count("/") >= 1:
            api_version, _, plural = resource.rpartition("/")
            group, _, version = api_version.rpartition("/")
        else:
            plural, _, group = resource.partition(".")
            version = ""
        wanted = plural.lower()
        for refresh in (False, True):  # a CRD may have been added since the last look
            if refresh or self._discovery is None:
                self._discovery = await self._discover()
            for found, names in self._discovery:
                if wanted in names and (not group or group == found.group) and \
                        (not version or version == found.version):
                    return found
        raise KubeError(404, {"message": f"no resource {resource!r} in discovery"})

    async def _discover(self) -> list[tuple[Resource, set[str]]]:
        versions = [("", "v1", "/api/v1")] + [
            (g["name"], g["preferredVersion"]["version"],
             f"/apis/{g['preferredVersion']['groupVersion']}")
            for g in (await self.request("GET", "/apis"))["groups"]]
        found = []
        for group, version, path in versions:
            for info in (await self.request("GET", path))["resources"]:
                if "/" not in info["name"]:
                    names = {info["name"], info.get("singularName") or "",
                             info["kind"].lower(), *(info.get("shortNames") or ())}
                    found.append((Resource(group, version, info["name"], info["namespaced"]),
                                  names))
        return found

    async def path(self, resource: str, namespace: str | None = None, name: str | None = None,
                   subresource: str | None = None) -> str:
        return (await self.resolve(resource)).path(namespace, name, subresource)

    # -- verbs -------------------------------------------------------------------------------

    async def create(self, resource: str, body: Body, namespace: str | None = None) -> Body:
        namespace = namespace or body.get("metadata", {}).get("namespace")
        return await self.request("POST", await self.path(resource, namespace), body=body)

    async def get(self, resource: str, name: str, namespace: str | None = None) -> Body | None:
        """The object, or None if it does not exist."""
        try:
            return await self.request("GET", await self.path(resource, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def patch(self, resource: str, name: str, patch: Any, namespace: str | None = None,
                    *, subresource: str | None = None) -> Body:
        """Merge-patch a dict, JSON-patch a list of operations."""
        kind = "json-patch" if isinstance(patch, list) else "merge-patch"
        return await self.request("PATCH", await self.path(resource, namespace, name, subresource),
                                  body=patch, content_type=f"application/{kind}+json")

    async def apply(self, body: Body, *, manager: str = "qkms-tests",
                    dry_run: bool = False) -> Body:
        """Server-side apply of one object (what ``kubectl apply --server-side`` sends)."""
        api_version, kind = body["apiVersion"], body["kind"]
        resource = await self.resolve(f"{api_version}/{kind.lower()}")
        params = {"fieldManager": manager, "force": "true"}
        if dry_run:
            params["dryRun"] = "All"
        path = resource.path(body["metadata"].get("namespace"), body["metadata"]["name"])
        return await self.request("PATCH", path, body=body, params=params,
                                  content_type="application/apply-patch+yaml")

    async def replace(self, resource: str, body: Body, namespace: str | None = None) -> Body:
        path = await self.path(resource, namespace, body["metadata"]["name"])
        return await self.request("PUT", path, body=body)

    async def delete(self, resource: str, name: str, namespace: str | None = None) -> Body:
        return await self.request("DELETE", await self.path(resource, namespace, name))

    async def list(self, resource: str, namespace: str | None = None, *, labels: str = "",
                   fields: str = "") -> list[Body]:
        params = {k: v for k, v in {"labelSelector": labels, "fieldSelector": fields}.items() if v}
        rsp = await self.request("GET", await self.path(resource, namespace), params=params)
        return list(rsp["items"])

    async def watch(self, resource: str, namespace: str | None = None,
                    **params: str) -> AsyncIterator[Body]:
        """Stream raw watch-events (``params``: resourceVersion, timeoutSeconds, …)."""
        query = {"watch": "true", **params}
        url = self.url + await self.path(resource, namespace)
        async with self.session.get(url, params=query, headers=self._headers(None)) as rsp:
            if rsp.status >= 400:
                raise KubeError(rsp.status, await rsp.json(content_type=None))
            async for line in rsp.content:
                if line.strip():
                    yield json.loads(line)
