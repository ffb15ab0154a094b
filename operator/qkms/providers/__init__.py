"""Key providers behind one protocol (``providers.base.Provider``)."""

from __future__ import annotations

import importlib

from qkms.config import Settings
from qkms.errors import InvalidInputError
from qkms.model.enums import ProviderType
from qkms.store.sealed import SealedStore

from .base import Provider

# Each provider module exposes ``build(settings, sealed) -> Provider``; SDKs are imported
# only when that provider is selected.
MODULES: dict[ProviderType, str] = {
    ProviderType.LOCAL_DEV: "qkms.providers.local",
    ProviderType.HASHICORP_VAULT: "qkms.providers.vault",
    ProviderType.AWS_KMS: "qkms.providers.aws",
    ProviderType.HSM: "qkms.providers.hsm",
    ProviderType.AZURE_KEY_VAULT: "qkms.providers.azure",
}


def build_provider(settings: Settings, sealed: SealedStore) -> Provider:
    """The provider ``settings`` selects; LOCAL_DEV is the default."""
    module = MODULES.get(settings.provider)
    if module is None:
        raise InvalidInputError(
            "KMS_PROVIDER", f"{settings.provider.value} is not available in this build yet")
    return importlib.import_module(module).build(settings, sealed)
