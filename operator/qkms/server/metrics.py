"""Prometheus metrics for ``/metrics/keys``, fed by the services' audit events.

Counting from the audit stream means every operation is counted exactly as it
is audited, refusals included, with no second bookkeeping path to drift.

``qkms serve`` with several data-plane workers: the reconciler (the parent process) and
every worker count into prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``,
set by the parent before any of them imports the library; see ``shared_metrics``), and
each scrape sums them all (``MultiProcessCollector``): whichever worker answers, the totals
are those of every writer's audit chain.  The gauges that are states (keys by state, time
to rotation) are read from the shared store by the answering process at scrape time (a
collector), so they need no sharing; ``qkms_audit_failures`` is each process's own count,
summed over the live processes (``livesum``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from qkms import lifecycle
from qkms.audit.entry import AuditEntry
from qkms.service import KeyManagementService

ROTATIONS = {"ROTATE", "MIGRATE"}
# prometheus-client's own variable, which the library reads from the environment itself:
# read here too (not in qkms.config), so qkms agrees with what the library does.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def shared_metrics() -> bool:
    """Whether this process counts into the multiprocess files.  The variable must be set
    before ``prometheus_client`` is imported (it picks its value class then)."""
    if not os.environ.get(MULTIPROC_ENV):
        return False
    if values.ValueClass is values.MutexValue:
        raise RuntimeError(f"{MULTIPROC_ENV} was set after prometheus_client was imported: "
                           "this process's counts would not be shared")
    return True


class States(Collector):
    """Keys by state and seconds to each key's next rotation, from the store at scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("qkms_keys", "Keys by state"),
                GaugeMetricFamily("qkms_key_next_rotation_seconds", "Seconds until each "
                                  "key's next rotation")]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = datetime.now(UTC)
        keys = GaugeMetricFamily("qkms_keys", "Keys by state", labels=["environment", "state"])
        rotation: dict[str, float] = {}
        for service in self.metrics.services:
            counts: dict[str, int] = {}
            for record in service.user_records():
                state = lifecycle.key_state(record).value
                counts[state] = counts.get(state, 0) + 1
                self.metrics._algorithms.setdefault(record.name, record.algorithm)
                due = lifecycle.next_rotation(record)
                if due is not None:
                    rotation[record.name] = (due - now).total_seconds()
            for state, count in counts.items():
                keys.add_metric([service.environment.value, state], count)
        yield keys
        next_rotation = GaugeMetricFamily("qkms_key_next_rotation_seconds",
                                          "Seconds until each key's next rotation",
                                          labels=["key"])
        for name, seconds in rotation.items():
            next_rotation.add_metric([name], seconds)
        yield next_rotation


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.shared = shared_metrics()
        r = self.registry
        self.created = Counter("qkms_keys_created_total", "Keys created", ["algorithm"],
                               registry=r)
        self.operations = Counter("qkms_operations_total", "Key operations",
                                  ["operation", "algorithm", "result"], registry=r)
        self.rotations = Counter("qkms_rotations_total", "Rotations", ["reason", "result"],
                                 registry=r)
        self.audit_events = Counter("qkms_audit_events_total", "Audit entries written",
                                    registry=r)
        self.audit_failures = Gauge("qkms_audit_failures", "Audit entries that failed to store",
                                    ["environment"], registry=r, multiprocess_mode="livesum")
        self.latency = Histogram("qkms_provider_latency_seconds",
                                 "Time spent in an operation, provider included",
                                 ["provider", "operation"], registry=r,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5,
                                          1, 2.5, 5))
        self.services: list[KeyManagementService] = []
        self._algorithms: dict[str, str] = {}
        self._operation_children: dict[tuple[str, str, str], Any] = {}
        self._pending: collections.Counter[Any] = collections.Counter()
        self._flush_due = False
        states = States(self)
        if self.shared:  # what every process counted, plus this one's view of the store
            self.exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposed)
            self.exposed.register(states)
        else:
            self.exposed = r
            r.register(states)

    def attach(self, service: KeyManagementService) -> None:
        service.on("auditEvent", self.observe_entry)

    def observe_entry(self, entry: AuditEntry) -> None:
        if entry.sequence is not None:  # stored: not an entry that failed to (fail-open)
            self._count(self.audit_events, 1)
        count = entry.details.get("count", "1")  # aggregated refusals carry their count
        times = int(count) if count.isdigit() else 1
        algorithm = entry.details.get("algorithm") or self._algorithms.get(entry.key_name or "",
                                                                           "unknown")
        if entry.operation == "CREATE" and entry.result == "success":
            self.created.labels(algorithm).inc()
            if entry.key_name:
                self._algorithms[entry.key_name] = algorithm
        elif entry.operation in ROTATIONS:
            self.rotations.labels(entry.reason or "unknown", entry.result).inc()
        else:
            labels = (entry.operation, algorithm, entry.result)
            child = self._operation_children.get(labels)
            if child is None:  # labels() validates and locks: once per combination
                child = self._operation_children[labels] = self.operations.labels(*labels)
            self._count(child, times)

    def _count(self, counter: Any, times: int) -> None:
        """Add to a hot counter at the end of this turn of the event loop: a batch's
        hundred entries make one increment (in multiprocess mode each is a locked write
        to a shared file) instead of a hundred.  Without a loop, at once."""
        self._pending[counter] += times
        if self._flush_due:
            return
        try:
            asyncio.get_running_loop().call_soon(self.flush)
            self._flush_due = True
        except RuntimeError:
            self.flush()

    def flush(self) -> None:
        """Write the pending increments (before the task that caused them resumes, and
        before every scrape)."""
        self._flush_due = False
        pending, self._pending = self._pending, collections.Counter()
        for counter, times in pending.items():
            counter.inc(times)

    def observe_latency(self, provider: str, operation: str, seconds: float) -> None:
        self.latency.labels(provider, operation).observe(seconds)

    def sync(self, services: list[KeyManagementService]) -> None:
        """Publish this process's audit storage failures (a count each service keeps)."""
        for service in services:
            self.audit_failures.labels(service.environment.value).set(
                service.counters["failures"]["audit"])

    def render(self, services: list[KeyManagementService]) -> bytes:
        """The states are read now, from ``services``; the counts are every process's."""
        self.flush()
        self.sync(services)
        self.services = services
        try:
            return generate_latest(self.exposed)
        finally:
            self.services = []


def process_dead(pid: int) -> None:
    """Drop a dead process's live gauges from the multiprocess files (its counters stay:
    what it audited stays in its chain)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
