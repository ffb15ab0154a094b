"""Measure a rate against a reference in the same run, interleaved, best of rounds.

These machines are noisy, so each figure is printed as a ratio against a
reference measured moments apart, never asserted as an absolute time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def rate(func: Callable[[], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            func()
        count += 20
    return count / elapsed


async def arate(func: Callable[[], Awaitable[object]], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            await func()
        count += 20
    return count / elapsed


async def compare(name: str, ours: Callable[[], Awaitable[object]],
                  reference: Callable[[], object], *, seconds: float = 1.0, rounds: int = 3,
                  target: float | None = None, per_call: int = 1) -> float:
    """Print ops/s for both and the ratio ours/reference (best of interleaved rounds).
    ``per_call``: how many operations one call of ``ours`` performs (a concurrent batch)."""
    best_ours = best_ref = 0.0
    for _ in range(rounds):
        best_ref = max(best_ref, rate(reference, seconds))
        best_ours = max(best_ours, per_call * await arate(ours, seconds))
    ratio = best_ours / best_ref
    goal = f"  (target >= {target})" if target is not None else ""
    print(f"{name:<44} qkms {best_ours:>10.0f}/s  reference {best_ref:>10.0f}/s  "
          f"ratio {ratio:.2f}{goal}")
    return ratio


def run(coro: Awaitable[object]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]
