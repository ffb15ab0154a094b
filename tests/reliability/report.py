"""Regenerate the figures tables in ``tests/reliability/README.md``.

    python -m tests.reliability.report           # the reliability tests (a few minutes)
    python -m tests.reliability.report --bench   # and the long-running checks (~15 min more)

The first runs ``pytest tests/reliability`` (output captured per test into a JUnit file),
takes every line a test printed that starts with ``FIGURE``, ``leak scan`` or
``generated resources``, and rewrites the table between the ``figures:tests`` markers,
with each line's test and outcome. ``--bench`` also runs ``python -m bench.run
reliability``, which rewrites one ``figures:bench-<check>`` table per check itself (so
running the bench alone keeps the README current too). Extra pytest arguments go after
``--``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = Path(__file__).resolve().parent / "README.md"
FIGURE = re.compile(r"^(FIGURE |leak scan|generated resources)")


@dataclass(frozen=True)
class Row:
    check: str
    figure: str
    test: str
    result: str


def split(line: str) -> tuple[str, str]:
    """``FIGURE name[variant]: text`` -> (name[variant], text); other lines at their colon."""
    text = line.removeprefix("FIGURE ").strip()
    check, _, figure = text.partition(": ")
    return (check, figure) if figure else ("", text)


def cell(text: str, limit: int = 600) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def table(rows: list[Row], header: str) -> str:
    lines = [header, "", "| Check | Figure | Test | Result |", "|---|---|---|---|"]
    lines += [f"| {cell(r.check)} | {cell(r.figure)} | {cell(r.test, 120)} | {r.result} |"
              for r in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, readme: Path = README) -> None:
    """Replace the text between ``<!-- figures:NAME:begin -->`` and its end marker."""
    begin, end = f"<!-- figures:{name}:begin -->", f"<!-- figures:{name}:end -->"
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{readme} has no {begin} ... {end} markers")
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    readme.write_text(f"{head}{begin}\n{body.strip()}\n{end}{tail}")


def stamp() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           text=True, capture_output=True).stdout.strip()
    return (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}"
            f"{' + local changes' if dirty else ''}, {os.cpu_count()} CPUs")


def parse_junit(path: Path) -> tuple[list[Row], dict[str, int]]:
    rows: list[Row] = []
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname', '').rpartition('.')[2]}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            result = "FAIL"
        elif case.find("skipped") is not None:
            result = "SKIP"
        else:
            result = "pass"
        counts[{"FAIL": "failed", "SKIP": "skipped", "pass": "passed"}[result]] += 1
        output = "\n".join(node.text or "" for node in case.iter("system-out"))
        figures = [line for line in output.splitlines() if FIGURE.match(line)]
        if not figures and result != "pass":
            skipped = case.find("skipped")
            reason = skipped.get("message", "") if skipped is not None else "no figure printed"
            rows.append(Row("", reason, test, result))
        for line in figures:
            check, figure = split(line)
            rows.append(Row(check, figure, test, result))
    return rows, counts


def run_tests(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "report.xml"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "operator"), str(ROOT), os.environ.get("PYTHONPATH")]))}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/reliability", "-q",
             f"--junitxml={junit}", "-o", "junit_logging=system-out",
             "-o", "junit_log_passing_tests=true", *extra], cwd=ROOT, env=env)
        elapsed = time.monotonic() - started
        if not junit.exists():
            print("report: pytest wrote no results", file=sys.stderr)
            return done.returncode or 1
        rows, counts = parse_junit(junit)
    summary = (f"_Default run: `python -m tests.reliability.report` ({stamp()}); "
               f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} "
               f"skipped in {elapsed:.0f} s._")
    write_section("tests", table(rows, summary))
    print(f"report: {len(rows)} figures written to {README.relative_to(ROOT)}")
    return done.returncode


def run_bench() -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT / "operator"), str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "bench.run", "reliability"], cwd=ROOT,
                          env=env).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.report",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", action="store_true",
                        help="also run the long-running checks (bench/bench_reliability)")
    parser.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments")
    args = parser.parse_args(argv)
    code = run_tests(args.pytest_args)
    if args.bench:
        code = run_bench() or code
    return code


if __name__ == "__main__":
    sys.exit(main())
