"""The HTTP side: the data plane for workloads, health, metrics and audit endpoints."""
