"""The benchmarks find the repository: they moved from tests/bench to bench/ once, and two
of them kept looking one folder too high (qkms serve was started with a --manifests
folder that does not exist, so the data-plane benchmark never came up)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import bench

REPO = Path(__file__).resolve().parents[2]


def test_every_benchmark_points_at_the_repository() -> None:
    for module in pkgutil.iter_modules(bench.__path__):
        loaded = importlib.import_module(f"bench.{module.name}")
        root = getattr(loaded, "ROOT", None)
        if root is not None:
            assert Path(root) == REPO, f"bench/{module.name}.py: ROOT is {root}, not {REPO}"
            assert (Path(root) / "examples").is_dir()
