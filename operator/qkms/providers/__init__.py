"""Key providers behind one protocol (``providers.base.Provider``)."""

from __future__ import annotations

import importlib

from qkms.config import Settings
from qkms.errors import InvalidInputError, ProviderUnavailableError
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


# The SDK each provider needs, by the module a missing one is named after, and its extra:
# (module prefix, distribution to install). A provider whose SDK is not installed is
# unavailable (ProviderUnavailableError, naming it), never an ImportError.
LIBRARIES: dict[ProviderType, tuple[str, tuple[tuple[str, str], ...]]] = {
    ProviderType.HASHICORP_VAULT: ("vault", (("hvac", "hvac"), ("requests", "requests"))),
    ProviderType.AWS_KMS: ("aws", (("boto3", "boto3"), ("botocore", "boto3"))),
    ProviderType.AZURE_KEY_VAULT: ("azure", (("azure.identity", "azure-identity"),
                                             ("azure", "azure-keyvault-keys"))),
    ProviderType.HSM: ("hsm", (("pkcs11", "python-pkcs11"),)),
}


def missing_library(provider: ProviderType, exc: ModuleNotFoundError) -> str | None:
    """The distribution a provider lacks, if `exc` is about one of its SDKs."""
    missing = exc.name or ""
    for prefix, distribution in LIBRARIES.get(provider, ("", ()))[1]:
        if missing == prefix or missing.startswith(prefix + "."):
            return distribution
    return None


def build_provider(settings: Settings, sealed: SealedStore) -> Provider:
    """The provider ``settings`` selects; LOCAL_DEV is the default."""
    module = MODULES.get(settings.provider)
    if module is None:
        raise InvalidInputError(
            "KMS_PROVIDER", f"{settings.provider.value} is not available in this build yet")
    try:
        return importlib.import_module(module).build(settings, sealed)
    except ModuleNotFoundError as exc:
        library = missing_library(settings.provider, exc)
        if library is None:
            raise
        extra = LIBRARIES[settings.provider][0]
        raise ProviderUnavailableError(
            f"{settings.provider.value}: {library} is not installed "
            f"(pip install 'qkms[{extra}]')") from None
