"""``wrk`` as the one external load generator of the data-plane benchmark.

A Lua script per operation (method, headers, body) is written into a private temp folder
(it holds the bearer token: never printed); ``wrk --latency`` runs it and its report is
parsed into requests/s, p50, p99 and errors (non-2xx answers and socket errors).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = ("wrk not found: install it from Debian (`apt-get install -y wrk`) "
                "or put a wrk binary on PATH")

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class Figures:
    """One side's result: requests/s, p50 and p99 in ms, errors."""
    rps: float
    p50: float
    p99: float
    errors: int
    requests: int


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse(report: str) -> Figures:
    """The figures of a ``wrk --latency`` report (pure: tested without wrk)."""
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", report)
    p50 = re.search(r"^\s+50%\s+(\S+)", report, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", report, re.M)
    total = re.search(r"(\d+) requests in", report)
    if not (rps and p50 and p99 and total):
        raise ValueError("wrk printed no figures:\n" + report[-400:])
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", report)
    if non2xx:
        errors += int(non2xx[1])
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        report)
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    return Figures(float(rps[1]), _ms(p50[1]), _ms(p99[1]), errors, int(total[1]))


def lua_script(headers: dict[str, str], body: dict) -> str:
    """A wrk script that POSTs ``body`` as JSON with ``headers`` (values escaped for Lua)."""
    quote = json.dumps  # a JSON string literal is a valid Lua string literal for ASCII text
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{quote(k)}] = {quote(v)}" for k, v in headers.items()]
    lines.append(f"wrk.body = {quote(json.dumps(body, separators=(',', ':')))}")
    return "\n".join(lines) + "\n"


def binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit(INSTALL_HINT)
    return found


def run(url: str, script: Path, *, seconds: float, connections: int = 32,
        threads: int = 2) -> Figures:
    """Run wrk for ``seconds`` against ``url`` with ``script``."""
    done = subprocess.run(
        [binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
         "--timeout", "10s", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-400:]}")
    return parse(done.stdout)
