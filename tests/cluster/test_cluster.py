"""The operator's end-to-end scenarios, on a real cluster (see conftest.py)."""

from __future__ import annotations

import pytest

from tests.k8s.test_operator_e2e import (  # noqa: F401 - collected here with the cluster `kube`
    qkms_operator,
    test_environment_mismatch_is_refused_and_recorded,
    test_examples_become_ready_with_verifiable_projections,
    test_kill_9_and_restart_in_a_fresh_workdir_resumes_without_duplicates,
    test_lifecycle_through_the_api,
    test_two_replicas_under_peering_one_active_then_failover,
)

pytestmark = pytest.mark.cluster
