"""Ratios between two rates measured interleaved, best of rounds (as ``timing.compare``),
for the provider benchmarks, where both sides may be async or concurrent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .timing import arate, rate

Rate = Callable[[], Awaitable[float]]


async def interleaved(name: str, ours: Rate, reference: Rate, *, rounds: int = 3,
                      target: float | None = None, labels: tuple[str, str] = ("qkms", "reference")
                      ) -> float:
    best_ours = best_ref = 0.0
    for _ in range(rounds):
        best_ref = max(best_ref, await reference())
        best_ours = max(best_ours, await ours())
    ratio = best_ours / best_ref
    goal = f"  (target >= {target})" if target is not None else ""
    print(f"{name:<46} {labels[0]} {best_ours:>8.0f}/s  {labels[1]} {best_ref:>8.0f}/s  "
          f"ratio {ratio:.2f}{goal}")
    return ratio


def sequential(fn: Callable[[], Awaitable[object]], seconds: float = 1.0) -> Rate:
    return lambda: arate(fn, seconds)


def blocking(fn: Callable[[], object], seconds: float = 1.0) -> Rate:
    async def measure() -> float:
        return rate(fn, seconds)
    return measure


def concurrent(fn: Callable[[], Awaitable[object]], callers: int = 16,
               seconds: float = 1.0) -> Rate:
    """Ops/s with ``callers`` tasks at once: their thread hand-offs overlap."""
    async def measure() -> float:
        done = 0
        deadline = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await fn()
                done += 1
        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return done / (time.perf_counter() - start)
    return measure
