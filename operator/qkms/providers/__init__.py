"""Key providers behind one protocol (``providers.base.Provider``)."""

from __future__ import annotations

import importlib
from types import ModuleType

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


def _unavailable(provider: ProviderType, exc: ModuleNotFoundError) -> ProviderUnavailableError:
    """The error for a missing SDK of ``provider`` (re-raises ``exc`` if it is not one)."""
    library = missing_library(provider, exc)
    if library is None:
        raise exc
    return ProviderUnavailableError(f"{provider.value}: {library} is not installed "
                                    f"(pip install 'qkms[{LIBRARIES[provider][0]}]')")


def provider_module(provider: ProviderType) -> ModuleType:
    """The module of ``provider``, its SDK imported: ProviderUnavailableError naming the
    extra if the SDK is missing (the CLI asks before it creates anything)."""
    module = MODULES.get(provider)
    if module is None:
        raise InvalidInputError(
            "KMS_PROVIDER", f"{provider.value} is not available in this build yet")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise _unavailable(provider, exc) from None


def build_provider(settings: Settings, sealed: SealedStore) -> Provider:
    """The provider ``settings`` selects; LOCAL_DEV is the default."""
    module = provider_module(settings.provider)
    try:
        return module.build(settings, sealed)
    except ModuleNotFoundError as exc:  # an SDK a provider imports as it is built
        raise _unavailable(settings.provider, exc) from None
