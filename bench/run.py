"""Run the benchmarks: ``python -m bench.run [engine ...]`` from the repo root.

Each benchmark prints its figures as ratios against a reference measured in
the same run; nothing here asserts an absolute time.
"""

from __future__ import annotations

import asyncio
import importlib
import sys

BENCHES = ["engine", "dataplane", "operator", "audit", "vault", "aws", "hsm", "azure",
           "reliability", "hardening"]


def main(names: list[str]) -> None:
    for name in names or BENCHES:
        module = importlib.import_module(f"bench.bench_{name}")
        asyncio.run(module.main())


if __name__ == "__main__":
    main(sys.argv[1:])
