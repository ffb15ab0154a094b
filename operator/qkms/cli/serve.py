"""``qkms serve``: the standalone reconciler and the data plane, in worker processes that
share one port (SO_REUSEPORT)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
from pathlib import Path
from typing import Any

from qkms.config import ServeConfig, Settings, listens_on_loopback
from qkms.errors import InvalidInputError, QkmsError

from .common import (
    OPENED,
    command,
    settings_from,
)


@command("serve")
async def serve(args: argparse.Namespace) -> None:
    from qkms.standalone import BUNDLED_EXAMPLES

    settings = settings_from(args)
    folder = args.manifests or BUNDLED_EXAMPLES
    if not folder.is_dir():
        raise InvalidInputError("--manifests", f"{folder} is not a folder")
    if args.worker_fd is not None:
        return await _serve_worker(args, settings, ServeConfig.from_env(), folder)
    serving = bool(args.listen) and not args.once
    config = ServeConfig.from_env() if serving else ServeConfig()  # no data plane: unread
    remove_metrics = _shared_metrics(config.workers)  # before prometheus_client is imported
    try:
        await _serve(args, settings, config, folder, serving)
    finally:
        remove_metrics()


async def _serve(args: argparse.Namespace, settings: Settings, config: ServeConfig,
                 folder: Path, serving: bool) -> None:
    """The parent of ``qkms serve``: the reconciler, and the data plane in this process
    (one worker) or in ``config.workers`` worker processes."""
    workers = config.workers
    from qkms.server.workers import Supervised, stop_on_signals
    from qkms.standalone import Standalone

    for flag, path in (("--tokens", args.tokens), ("--tls-cert", args.tls_cert),
                       ("--tls-key", args.tls_key), ("--tls-client-ca", args.tls_client_ca)):
        if path is not None and not path.is_file():
            raise InvalidInputError(flag, f"{path} is not a file")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InvalidInputError("--tls-key", "give --tls-cert and --tls-key together")
    if serving and not args.tls_cert and not listens_on_loopback(args.listen):
        raise InvalidInputError("--listen", f"plain HTTP only on loopback, not {args.listen}: "
                                            "give --tls-cert and --tls-key to listen there")
    _check_master_key(settings)  # once, before any key: not once per key
    auth = _standalone_auth(args) if serving else None
    # a busy port fails before any key is made
    sock = _listen_socket(args.listen, reuseport=workers > 1) if serving else None
    if args.manifests is None:
        print(f"qkms serve: no --manifests given; serving the bundled examples in {folder}")
    out = args.out or settings.data_dir / "projections"
    stop = stop_on_signals()
    runner = Standalone(settings, folder, out, say=lambda line: print(line, flush=True))
    metrics = None
    if serving:  # count every audited operation from the first reconcile, as the chain does
        from qkms.server.metrics import Metrics

        metrics = Metrics()
        runner.registry.on_new.append(metrics.attach)
    api = supervised = None
    task = asyncio.create_task(runner.run(stop, poll=args.poll, once=args.once))
    try:
        if sock is not None:
            ready = asyncio.create_task(runner.ready.wait())
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if runner.ready.is_set() and workers > 1:  # keys exist: the workers may start
                pool = _start_workers(args, sock, workers, settings.audit_writer)
                sock = None  # the first worker has it
                supervised = Supervised.start(pool, metrics, runner.registry, stop, args.poll)
            elif runner.ready.is_set():  # keys exist before the first request can arrive
                api = await _standalone_api(args, runner, auth, sock, metrics,
                                            config.metrics_token)
        await task
    finally:
        if supervised is not None:
            await supervised.cleanup()
        if api is not None:
            await api.cleanup()
        elif sock is not None:
            sock.close()
        OPENED.extend(runner.registry.all())  # closed by run_command: final checkpoints
    if args.once and runner.failed:  # a one-off run (a CI step) that did not do its job
        raise QkmsError(f"{len(runner.failed)} of {len(runner.manifests.keys)} ManagedKey(s) "
                        "could not be reconciled (their errors are above)")
    print("qkms serve: stopped", flush=True)


def _check_master_key(settings: Settings) -> None:
    """The master key of the data dir's stores (every environment's): a missing or wrong one
    is one error before reconciling, not one per key."""
    from qkms.store.layout import check_kek, environment_stores

    for store in environment_stores(settings.data_dir):
        check_kek(settings.kek_path, store)


def _shared_metrics(workers: int) -> Any:
    """With several processes, one multiprocess metrics folder for them all, named in the
    environment before prometheus_client is imported (the workers inherit it); returns
    what removes it.  A folder the user named is emptied at start even for one process:
    the library would add a previous run's counts.  ``PROMETHEUS_MULTIPROC_DIR`` is
    prometheus-client's own variable, which it reads itself at import: it stays in the
    environment (not in ``qkms.config``), where this process and its workers share it."""
    if workers < 2 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return lambda: None
    from qkms.server.workers import metrics_folder

    return metrics_folder(os.environ)  # type: ignore[arg-type]


def _start_workers(args: argparse.Namespace, sock: Any, count: int, writer: str) -> Any:
    """``count`` data-plane worker processes on ``sock``'s port (SO_REUSEPORT); ``writer``:
    this process's audit writer, which each worker's extends."""
    from qkms.server.metrics import process_dead
    from qkms.server.workers import WorkerPool, worker_command

    host, port = sock.getsockname()[:2]
    pool = WorkerPool(worker_command(args.argv), host, port, count, exited=process_dead,
                      writer=writer)
    pool.start(sock)
    print(f"qkms serve: data plane on {'https' if args.tls_cert else 'http'}://{args.listen} "
          f"({count} worker processes)", flush=True)
    return pool


async def _serve_worker(args: argparse.Namespace, settings: Settings, config: ServeConfig,
                        folder: Path) -> None:
    """One data-plane worker of ``qkms serve`` (started by it with ``--worker-fd``)."""
    import socket

    from qkms.server.metrics import Metrics
    from qkms.server.workers import publish_metrics, stop_on_signals
    from qkms.standalone import ManifestDirectory, serve_worker

    sock = socket.socket(fileno=args.worker_fd)
    sock.setblocking(False)
    auth = _standalone_auth(args)
    stop = stop_on_signals()
    directory = ManifestDirectory(settings, folder, say=lambda line: None)
    metrics = Metrics()
    directory.registry.on_new.append(metrics.attach)
    publisher = asyncio.create_task(publish_metrics(metrics, directory.registry, stop, args.poll))
    try:
        await serve_worker(directory, lambda: _standalone_api(args, directory, auth, sock,
                                                               metrics, config.metrics_token,
                                                               quiet=True),
                           stop, poll=args.poll, parent=config.worker_parent)
    finally:
        stop.set()
        await publisher
        OPENED.extend(directory.registry.all())  # closed by run_command: final checkpoints


def _listen_socket(listen: str, *, reuseport: bool = False) -> Any:
    """Bind ``HOST:PORT`` now, so a busy port is reported before any key is made;
    ``reuseport``: with SO_REUSEPORT, for the data-plane workers to share the port."""
    import socket

    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidInputError("--listen", f"{listen!r} is not HOST:PORT")
    host, port = host.strip("[]") or "0.0.0.0", int(port_text)  # noqa: S104 - as asked
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise InvalidInputError("--listen", f"cannot listen on {listen}: {exc.strerror or exc}"
                                ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise QkmsError(f"port {port} is in use; use --listen HOST:PORT "
                            f"(e.g. --listen 127.0.0.1:{port + 1})") from None
        raise QkmsError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _standalone_auth(args: argparse.Namespace) -> Any:
    """Read the tokens file and the TLS files before any key is made: a mistake in them
    is reported first, not after reconciling."""
    import ssl

    import yaml

    from qkms.server.app import tls_context
    from qkms.server.auth import TokensFile

    if args.tls_cert:
        try:
            tls_context(args.tls_cert, args.tls_key, args.tls_client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise InvalidInputError("--tls-cert", f"cannot load the certificate, key or CA: "
                                                  f"{exc}") from None
    if not args.tokens:
        return None
    try:
        return TokensFile(args.tokens)
    except InvalidInputError as exc:
        raise InvalidInputError("--tokens", f"{args.tokens}: {exc}") from None
    except (yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise InvalidInputError("--tokens", f"{args.tokens} is not a tokens file: "
                                            f"{type(exc).__name__}") from None


async def _standalone_api(args: argparse.Namespace, runner: Any, auth: Any, sock: Any,
                          metrics: Any, metrics_token: str, *, quiet: bool = False) -> Any:
    from qkms.server.app import start_data_plane
    from qkms.server.auth import TokensFile

    if auth is None:
        auth = TokensFile.empty()
        if not quiet:
            print("qkms serve: no --tokens file: key operations will answer 401", flush=True)
    tls = (args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    api = await start_data_plane(runner, runner.registry, auth, auth, args.listen, tls,
                                 sock=sock, metrics=metrics, quiet=True,
                                 metrics_token=metrics_token)
    if not quiet:
        print(f"qkms serve: data plane on {'https' if tls else 'http'}://{args.listen}",
              flush=True)
    return api
