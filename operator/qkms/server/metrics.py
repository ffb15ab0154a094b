"""Prometheus metrics for ``/metrics/keys``, fed by the services' audit events.

Counting from the audit stream means every operation is counted exactly as it
is audited, refusals included, with no second bookkeeping path to drift.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from qkms import lifecycle
from qkms.audit.entry import AuditEntry
from qkms.service import KeyManagementService

ROTATIONS = {"ROTATE", "MIGRATE"}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
                                    ["environment"], registry=r)
        self.latency = Histogram("qkms_provider_latency_seconds",
                                 "Time spent in an operation, provider included",
                                 ["provider", "operation"], registry=r,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5,
                                          1, 2.5, 5))
        self.keys = Gauge("qkms_keys", "Keys by state", ["environment", "state"], registry=r)
        self.next_rotation = Gauge("qkms_key_next_rotation_seconds",
                                   "Seconds until each key's next rotation", ["key"], registry=r)
        self._algorithms: dict[str, str] = {}

    def attach(self, service: KeyManagementService) -> None:
        service.on("auditEvent", self.observe_entry)

    def observe_entry(self, entry: AuditEntry) -> None:
        self.audit_events.inc()
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
            self.operations.labels(entry.operation, algorithm, entry.result).inc(times)

    def observe_latency(self, provider: str, operation: str, seconds: float) -> None:
        self.latency.labels(provider, operation).observe(seconds)

    def render(self, services: list[KeyManagementService]) -> bytes:
        """Refresh the gauges that are states rather than events, then render."""
        now = datetime.now(UTC)
        self.keys.clear()
        self.next_rotation.clear()
        for service in services:
            env = service.environment.value
            self.audit_failures.labels(env).set(service.counters["failures"]["audit"])
            counts: dict[str, int] = {}
            for record in service.user_records():
                state = lifecycle.key_state(record).value
                counts[state] = counts.get(state, 0) + 1
                self._algorithms.setdefault(record.name, record.algorithm)
                due = lifecycle.next_rotation(record)
                if due is not None:
                    self.next_rotation.labels(record.name).set((due - now).total_seconds())
            for state, count in counts.items():
                self.keys.labels(env, state).set(count)
        return generate_latest(self.registry)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
