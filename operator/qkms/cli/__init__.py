"""The ``qkms`` command.

Every command uses one data-dir layout (``qkms.store.layout``): ``--data-dir``
(default ``.qkms``) holds the master key, and ``--environment`` (default
``dev``) picks the folder with that environment's store and audit chain, the
one ``qkms serve`` writes.  Inputs and outputs are files or stdin/stdout (``-``), raw or base64
(``--encoding``).  Results are JSON on stdout; errors go to stderr as
``qkms: error: <message>`` with exit code 2 for bad input and 1 otherwise.

One module per group of commands (``keys``, ``admin``, ``serve``, ``cluster``; the
``audit`` commands live in ``qkms.audit.cli``); importing them registers each with
``common.command``; ``parser`` holds the flags."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from qkms import logs
from qkms.errors import InvalidInputError, QkmsError

from . import admin, cluster, keys, serve  # noqa: F401 - register their commands
from .common import EXTRAS, run_command
from .parser import build_parser

__all__ = ["build_parser", "main"]


def _loop_factory() -> Any:
    """uvloop where installed (the operator extra brings it): a faster event loop for the
    data plane; the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # data-plane workers run it again
    logs.configure()
    name = " ".join(p for p in (args.group, getattr(args, "action", None),
                                getattr(args, "audit_action", None)) if p)
    try:
        if args.group == "audit":
            from qkms.audit import cli as audit_cli
            from qkms.crypto import verify_signature

            return asyncio.run(audit_cli.run(args, verify_signature))
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run_command(name, args))
    except InvalidInputError as exc:
        print(f"qkms: error: {exc}", file=sys.stderr)
        return 2
    except QkmsError as exc:
        print(f"qkms: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        if package not in EXTRAS:
            raise
        extra = EXTRAS[package]
        print(f"qkms: error: `qkms {name}` needs {package}, from the {extra} extra: "
              f"pip install 'qkms[{extra}]'", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader (head, less) went away: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:  # a file or folder the command was pointed at
        where = f": {exc.filename}" if exc.filename else ""
        print(f"qkms: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    return 0
