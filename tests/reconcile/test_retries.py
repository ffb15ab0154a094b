"""The retry delay after a transient fault (qkms/reconcile/retries.py)."""

from __future__ import annotations

import pytest

from qkms.reconcile.retries import BACKOFF, JITTER, Fault, retry_delay


@pytest.mark.parametrize("fault", list(Fault))
def test_exponential_from_a_short_first_delay_up_to_a_cap(fault) -> None:
    first, cap = BACKOFF[fault]
    delays = [retry_delay(n, fault, rng=lambda: 0.5) for n in range(12)]
    assert delays[0] == first and delays[1] == 2 * first
    assert delays == sorted(delays) and delays[-1] == cap


def test_an_api_outage_is_met_within_seconds_a_provider_outage_more_gently() -> None:
    """Kopf's own default is 60 s: after an API outage of any length, a key retries within
    the API cap (8 s, +20%) of the API's return."""
    longest = retry_delay(50, Fault.API, rng=lambda: 1.0)
    assert longest == pytest.approx(8 * (1 + JITTER)) and longest < 60
    assert retry_delay(50, Fault.PROVIDER, rng=lambda: 0.5) == 30


def test_jitter_spreads_keys_that_failed_together() -> None:
    low = retry_delay(3, Fault.API, rng=lambda: 0.0)
    high = retry_delay(3, Fault.API, rng=lambda: 0.999)
    assert low == pytest.approx(8 * (1 - JITTER)) and high > 8 * (1 + JITTER) - 0.01
