"""The registry and the suites agree both ways, and lookups are cached."""

from __future__ import annotations

import pytest

from qkms import crypto
from qkms.crypto import suite_for
from qkms.errors import UnsupportedAlgorithmError
from qkms.model.algorithms import ALGORITHMS


@pytest.mark.parametrize("info", ALGORITHMS, ids=lambda a: a.name)
def test_every_registry_entry_has_a_suite(info) -> None:
    suite = suite_for(info)
    assert suite.info is info
    for method in ("generate", "load_private", "load_public"):
        assert callable(getattr(suite, method))


def test_no_suite_without_a_registry_entry() -> None:
    assert set(crypto._FACTORIES) == {a.name for a in ALGORITHMS}


@pytest.mark.parametrize("info", ALGORITHMS, ids=lambda a: a.name)
def test_names_and_aliases_share_one_cached_suite(info) -> None:
    suite = suite_for(info)
    for name in (info.name, info.name.lower(), *info.aliases):
        assert suite_for(name) is suite


def test_unknown_algorithm_is_refused_with_the_registry_error() -> None:
    with pytest.raises(UnsupportedAlgorithmError):
        suite_for("DES-CBC")
