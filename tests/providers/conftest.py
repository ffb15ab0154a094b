"""The shared provider suite runs against every provider, each on a real local server.

``PROVIDER_FIXTURES`` maps a provider to the fixture that starts its server (on
127.0.0.1) and returns the provider options (the seed's environment variables).
``KMS_PROVIDER=HASHICORP_VAULT python -m pytest`` runs the suite against that
provider only, as the seed's integration form does.
"""

from __future__ import annotations

import os

import pytest

from qkms.config import Settings
from qkms.model.enums import Environment, ProviderType
from qkms.service import KeyManagementService

# Each server's fixtures (pytest_plugins is only allowed in the root conftest).
from tests.support.azure_keyvault import azure_options, azure_vault  # noqa: F401
from tests.support.moto import aws_options, moto_server  # noqa: F401
from tests.support.openbao import make_openbao_raft, openbao_server, vault_options  # noqa: F401
from tests.support.softhsm import hsm_options, softhsm  # noqa: F401

PROVIDER_FIXTURES: dict[ProviderType, str] = {
    ProviderType.LOCAL_DEV: "local_dev_options",
    ProviderType.HASHICORP_VAULT: "vault_options",
    ProviderType.AWS_KMS: "aws_options",
    ProviderType.HSM: "hsm_options",
    ProviderType.AZURE_KEY_VAULT: "azure_options",
}


def selected() -> list[ProviderType]:
    chosen = os.environ.get("KMS_PROVIDER")
    if chosen:
        return [ProviderType(chosen)]
    return list(PROVIDER_FIXTURES)


@pytest.fixture
def local_dev_options() -> dict[str, str]:
    return {}


@pytest.fixture(params=selected(), ids=lambda p: p.value)
def provider_type(request) -> ProviderType:
    return request.param


@pytest.fixture
def make_provider_service(request, provider_type, tmp_path, clock):
    options = request.getfixturevalue(PROVIDER_FIXTURES[provider_type])

    def make(**overrides) -> KeyManagementService:
        settings = Settings(environment=Environment.DEV, provider=provider_type,
                            data_dir=tmp_path / "data", provider_options=dict(options),
                            **overrides)
        return KeyManagementService(settings, clock=clock)
    return make


@pytest.fixture
def provider_service(make_provider_service) -> KeyManagementService:
    return make_provider_service()
