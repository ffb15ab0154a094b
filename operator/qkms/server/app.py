"""The aiohttp application: routes, request IDs, JSON errors, TLS.

The same app runs in every operator replica (behind a Service: adding replicas
adds throughput; only reconciliation is single-active) and in ``qkms serve``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import re
import socket
import ssl
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from qkms.errors import Forbidden, InvalidInputError, QkmsError, Unauthenticated
from qkms.logs import escape
from qkms.service import KeyManagementService

from .api import Call, DataPlane, KeyDirectory
from .chains import ChainFollower, audit_across_writers
from .denials import bounded
from .errors import TooLarge, UnsupportedMedia, error_body, status_of
from .metrics import Metrics, Timer
from .openapi import document

log = logging.getLogger("key-management:server")

MAX_BODY = 1024 * 1024
PLANE = web.AppKey("plane", DataPlane)
METRICS = web.AppKey("metrics", Metrics)
DIRECTORY = web.AppKey("directory", object)
Services = Callable[[], list[KeyManagementService]]
"""The live services (they appear as policies do)."""
SERVICES: web.AppKey[Services] = web.AppKey("services")
METRICS_TOKEN = web.AppKey("metrics_token", bytes)
CHAINS = web.AppKey("chains", ChainFollower)


def _json(data: Any, status: int = 200, request_id: str | None = None) -> web.Response:
    headers = {"X-Request-Id": request_id} if request_id else None
    return web.Response(body=orjson.dumps(data), status=status,
                        content_type="application/json", headers=headers)


def _error(exc: QkmsError, request_id: str) -> web.Response:
    return _json(error_body(exc, request_id), status_of(exc), request_id)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


_ID_PREFIX = uuid.uuid4().hex[:16]  # this process's; a counter makes each ID unique
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A unique request ID, without a random draw per request (the hot path)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def request_id_of(request: web.Request) -> str:
    """The caller's X-Request-Id if it is a plain token, else a new one: it is echoed in
    headers, bodies and logs, so it must not carry anything else."""
    given = request.headers.get("X-Request-Id", "")
    return given if given and _REQUEST_ID.fullmatch(given) else new_request_id()


async def key_operation(request: web.Request) -> web.Response:
    request_id = request_id_of(request)
    namespace = request.match_info["namespace"]
    name, _, operation = request.match_info["target"].rpartition(":")
    timer = Timer()
    plane = request.app[PLANE]
    try:
        call = Call(namespace, name, operation)
        # The token first: without a valid one, the body is not even read.
        identity = await plane.authenticate(call, request.headers.get("Authorization"),
                                            source=request.remote or "unknown")
        if not name:
            raise InvalidInputError("path", "must be /v1/keys/{namespace}/{name}:{operation}")
        if request.content_type != "application/json":
            raise UnsupportedMedia("content type must be application/json")
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidInputError("body", "is not valid JSON") from None
        result = await plane.handle(call, body, identity=identity,
                                    source=request.remote or "unknown")
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


async def _overall(request: web.Request) -> tuple[str, dict[str, Any]]:
    services = request.app[SERVICES]()
    reports = {s.environment.value: await s.health_check() for s in services}
    states = {r["status"] for r in reports.values()}
    status = ("unhealthy" if "unhealthy" in states else "degraded" if "degraded" in states
              else "healthy")
    return status, reports


async def observer(request: web.Request) -> bool:
    """May this request see health detail and metrics?  No Authorization header: False.
    A token: the metrics token (``QKMS_METRICS_TOKEN``), or a caller allowed the verb
    ``metrics`` on managedkeys in its own namespace; else 401 or 403 (raised)."""
    authorization = request.headers.get("Authorization")
    if not authorization:
        return False
    expected = request.app[METRICS_TOKEN]
    if expected and authorization.startswith("Bearer ") and hmac.compare_digest(
            hashlib.sha256(authorization[7:].strip().encode()).digest(), expected):
        return True
    plane = request.app[PLANE]
    identity = await plane.identify(authorization)
    namespace = identity.namespace
    if namespace is None or not await plane.authorizer.allowed(identity, "metrics",
                                                               namespace, ""):
        raise Forbidden(f"{identity.username} may not read qkms health detail or metrics")
    return True


async def health(request: web.Request) -> web.Response:
    """Public: the overall status only.  With a token allowed ``metrics``: per environment
    and per component detail (paths, record names, provider) as well; the audit section
    counts the entries of every writer's chain (every worker, replica and the reconciler)."""
    request_id = uuid.uuid4().hex
    try:
        detailed = await observer(request)
    except QkmsError as exc:
        return _error(exc, request_id)
    status, reports = await _overall(request)
    body: dict[str, Any] = {"status": status}
    if detailed:
        for report in reports.values():
            audit_ = report["components"].get("audit", {})
            own = Path(audit_["folder"]) if "folder" in audit_ else None
            report["components"]["audit"] = await asyncio.to_thread(
                audit_across_writers, audit_, own, request.app[CHAINS])
        body["environments"] = reports
    return _json(body, 503 if status == "unhealthy" else 200)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers.  No detail, no authentication."""
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: no environment is unhealthy.  No detail, no authentication."""
    status, _ = await _overall(request)
    ready = status != "unhealthy"
    return _json({"status": "ready" if ready else "unready"}, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Per-key metrics name every key: only for the metrics token or a ``metrics`` grant."""
    request_id = uuid.uuid4().hex
    try:
        if not await observer(request):
            raise Unauthenticated("a bearer token is required")
    except QkmsError as exc:
        return _error(exc, request_id)
    body = request.app[METRICS].render(request.app[SERVICES]())
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def audit(request: web.Request) -> web.Response:
    """Recent audit entries of the namespaces the caller may ``audit`` (``?namespace=a,b``,
    default its own), each in the caller's own environment: never another namespace's or
    environment's entries, and counts over those entries only."""
    request_id = uuid.uuid4().hex
    plane = request.app[PLANE]
    try:
        limit_text = request.query.get("limit", "100")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
            raise InvalidInputError("limit", "must be an integer from 1 to 1000")
        identity = await plane.identify(request.headers.get("Authorization"))
        if identity.namespace is None:
            raise Forbidden(f"{identity.username} is not a ServiceAccount, so its "
                            "environment is unknown")
        wanted = [n.strip() for n in request.query.get("namespace", identity.namespace)
                  .split(",") if n.strip()]
        if not wanted or len(wanted) > 50:
            raise InvalidInputError("namespace", "name 1 to 50 namespaces")
        caller_env = await plane.path_environment(identity.namespace)
        scopes: dict[str, list[str]] = {}
        for namespace in wanted:
            environment = await plane.path_environment(namespace)
            if not await plane.authorizer.allowed(identity, "audit", namespace, ""):
                raise Forbidden(f"{identity.username} may not read the audit log of "
                                f"namespace {bounded(namespace, 64)}")
            if environment is None or environment is not caller_env:
                raise Forbidden(f"namespace {bounded(namespace, 64)} is not in the caller's "
                                f"environment")
            scopes.setdefault(environment.value, []).append(namespace)
    except QkmsError as exc:
        return _error(exc, request_id)
    out = {}
    limit = int(limit_text)
    for service in request.app[SERVICES]():
        namespaces = scopes.get(service.environment.value)
        if not namespaces:
            continue
        prefixes = tuple(f"{n}/" for n in namespaces)
        entries = [e for e in service.audit.recent(100_000)
                   if e.key_name and e.key_name.startswith(prefixes)][-limit:]
        out[service.environment.value] = {
            "namespaces": namespaces,
            "operations": dict(Counter(f"{e.operation}:{e.result}" for e in entries)),
            "failures": dict(Counter(e.details.get("code", "unknown") for e in entries
                                     if e.result != "success")),
            "recent": [e.to_dict() for e in entries]}
    return _json(out, request_id=request_id)


async def openapi(request: web.Request) -> web.Response:
    return _json(document())


def make_app(plane: DataPlane, services: Services, metrics_: Metrics | None = None,
             metrics_token: str = "") -> web.Application:
    """``services`` is a callable returning the live services (they appear as policies do);
    ``metrics_token``: ``QKMS_METRICS_TOKEN`` (``ServeConfig``, ``OperatorConfig``), ""
    for none."""
    app = web.Application(client_max_size=MAX_BODY)
    app[PLANE] = plane
    app[METRICS] = metrics_ or Metrics()
    app[SERVICES] = services
    app[CHAINS] = ChainFollower()
    token = metrics_token.strip()
    app[METRICS_TOKEN] = hashlib.sha256(token.encode()).digest() if token else b""
    app.on_cleanup.append(_flush_denials)
    app.router.add_post("/v1/keys/{namespace}/{target}", key_operation)
    app.router.add_get("/health/keys", health)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics/keys", metrics)
    app.router.add_get("/audit/keys", audit)
    app.router.add_get("/openapi.json", openapi)
    return app


async def _flush_denials(app: web.Application) -> None:
    await app[PLANE].denials.flush()


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
                           quiet: bool = False,
                           metrics_token: str = "") -> web.AppRunner:
    """Build and start the server for a registry of services; returns the runner.

    ``metrics``: one the caller attached to the registry already (so it counted the
    services' audit entries from their first one); ``sock``: a socket bound already;
    ``quiet``: the caller says where it listens; ``metrics_token``: as ``make_app``'s."""
    metrics_ = metrics
    if metrics_ is None:
        metrics_ = Metrics()
        registry.on_new.append(metrics_.attach)
        for service in registry.all():
            metrics_.attach(service)
    plane = DataPlane(directory, authenticator, authorizer, registry=registry)
    app = make_app(plane, registry.all, metrics_, metrics_token)
    host, _, port = listen.rpartition(":")
    context = tls_context(*tls) if tls else None
    runner = await start(app, host or "0.0.0.0", int(port), context, sock)  # noqa: S104
    if not quiet:
        log.info("data plane listening on %s://%s", "https" if context else "http", listen)
    return runner
