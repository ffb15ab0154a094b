"""The aiohttp application: routes, request IDs, JSON errors, TLS.

The same app runs in every operator replica (behind a Service: adding replicas
adds throughput; only reconciliation is single-active) and in ``qkms serve``.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from qkms.errors import Forbidden, InvalidInputError, QkmsError
from qkms.logs import escape

from .api import Call, DataPlane, KeyDirectory
from .errors import TooLarge, UnsupportedMedia, error_body, status_of
from .metrics import Metrics, Timer
from .openapi import document

log = logging.getLogger("key-management:server")

MAX_BODY = 1024 * 1024
PLANE = web.AppKey("plane", DataPlane)
METRICS = web.AppKey("metrics", Metrics)
DIRECTORY = web.AppKey("directory", object)
SERVICES = web.AppKey("services", object)


def _json(data: Any, status: int = 200, request_id: str | None = None) -> web.Response:
    headers = {"X-Request-Id": request_id} if request_id else None
    return web.Response(body=orjson.dumps(data), status=status,
                        content_type="application/json", headers=headers)


def _error(exc: QkmsError, request_id: str) -> web.Response:
    return _json(error_body(exc, request_id), status_of(exc), request_id)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_of(request: web.Request) -> str:
    """The caller's X-Request-Id if it is a plain token, else a new one: it is echoed in
    headers, bodies and logs, so it must not carry anything else."""
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


async def key_operation(request: web.Request) -> web.Response:
    request_id = request_id_of(request)
    namespace = request.match_info["namespace"]
    name, _, operation = request.match_info["target"].rpartition(":")
    timer = Timer()
    try:
        if not name:
            raise InvalidInputError("path", "must be /v1/keys/{namespace}/{name}:{operation}")
        if request.content_type != "application/json":
            raise UnsupportedMedia("content type must be application/json")
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidInputError("body", "is not valid JSON") from None
        result = await request.app[PLANE].handle(Call(namespace, name, operation), body,
                                                 request.headers.get("Authorization"))
    except QkmsError as exc:
        # Every request-derived value is escaped and bounded: one request, one log line.
        log.info("%s %s/%s: %s", escape(operation, 64), escape(namespace, 64),
                 escape(name, 256), exc.code,
                 extra={"request_id": request_id, "operation": escape(operation, 64)})
        return _error(exc, request_id)
    except web.HTTPRequestEntityTooLarge:
        return _json(error_body(TooLarge(f"body larger than {MAX_BODY} bytes"), request_id),
                     413, request_id)
    request.app[METRICS].observe_latency("qkms", operation, timer.elapsed())
    return _json(result, request_id=request_id)


async def health(request: web.Request) -> web.Response:
    services = request.app[SERVICES]()
    reports = {s.environment.value: await s.health_check() for s in services}
    states = {r["status"] for r in reports.values()}
    status = ("unhealthy" if "unhealthy" in states else "degraded" if "degraded" in states
              else "healthy")
    return _json({"status": status, "environments": reports},
                 503 if status == "unhealthy" else 200)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render(request.app[SERVICES]())
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def audit(request: web.Request) -> web.Response:
    """Audit statistics and recent entries, for callers allowed to ``audit`` managedkeys."""
    request_id = uuid.uuid4().hex
    plane = request.app[PLANE]
    try:
        limit_text = request.query.get("limit", "100")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
            raise InvalidInputError("limit", "must be an integer from 1 to 1000")
        identity = await plane.identify(request.headers.get("Authorization"))
        namespace = identity.namespace or ""
        if not await plane.authorizer.allowed(identity, "audit", namespace, ""):
            raise Forbidden(f"{identity.username} may not read the audit log")
    except QkmsError as exc:
        return _error(exc, request_id)
    out = {}
    for service in request.app[SERVICES]():
        entries = service.audit.recent(int(limit_text))
        stats = await service.get_statistics()
        out[service.environment.value] = {
            "operations": stats["operations"], "failures": stats["failures"],
            "recent": [e.to_dict() for e in entries]}
    return _json(out, request_id=request_id)


async def openapi(request: web.Request) -> web.Response:
    return _json(document())


def make_app(plane: DataPlane, services: Any, metrics_: Metrics | None = None) -> web.Application:
    """``services`` is a callable returning the live services (they appear as policies do)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[PLANE] = plane
    app[METRICS] = metrics_ or Metrics()
    app[SERVICES] = services
    app.router.add_post("/v1/keys/{namespace}/{target}", key_operation)
    app.router.add_get("/health/keys", health)
    app.router.add_get("/metrics/keys", metrics)
    app.router.add_get("/audit/keys", audit)
    app.router.add_get("/openapi.json", openapi)
    return app


def tls_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """TLS from certificate files (cert-manager writes them); mutual TLS with a client CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def start(app: web.Application, host: str, port: int,
                ssl_context: ssl.SSLContext | None = None,
                sock: socket.socket | None = None) -> web.AppRunner:
    """Serve on ``host:port``, or on ``sock`` if the caller bound it already."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site: web.BaseSite = (web.SockSite(runner, sock, ssl_context=ssl_context) if sock is not None
                          else web.TCPSite(runner, host, port, ssl_context=ssl_context,
                                           backlog=1024))
    await site.start()
    return runner


__all__ = ["KeyDirectory", "make_app", "start", "tls_context"]


async def start_data_plane(directory: KeyDirectory, registry: Any, authenticator: Any,
                           authorizer: Any, listen: str,
                           tls: tuple[Path, Path, Path | None] | None = None, *,
                           sock: socket.socket | None = None, metrics: Metrics | None = None,
                           quiet: bool = False) -> web.AppRunner:
    """Build and start the server for a registry of services; returns the runner.

    ``metrics``: one the caller attached to the registry already (so it counted the
    services' audit entries from their first one); ``sock``: a socket bound already;
    ``quiet``: the caller says where it listens."""
    metrics_ = metrics
    if metrics_ is None:
        metrics_ = Metrics()
        registry.on_new.append(metrics_.attach)
        for service in registry.all():
            metrics_.attach(service)
    plane = DataPlane(directory, authenticator, authorizer)
    app = make_app(plane, registry.all, metrics_)
    host, _, port = listen.rpartition(":")
    context = tls_context(*tls) if tls else None
    runner = await start(app, host or "0.0.0.0", int(port), context, sock)  # noqa: S104
    if not quiet:
        log.info("data plane listening on %s://%s", "https" if context else "http", listen)
    return runner
