"""Key providers behind one protocol (``providers.base.Provider``)."""

from __future__ import annotations

from qkms.config import Settings
from qkms.errors import InvalidInputError
from qkms.model.enums import ProviderType
from qkms.store.sealed import SealedStore

from .base import Provider


def build_provider(settings: Settings, sealed: SealedStore) -> Provider:
    """The provider ``settings`` selects; LOCAL_DEV is the default."""
    if settings.provider is ProviderType.LOCAL_DEV:
        from .local import LocalDevProvider

        return LocalDevProvider(sealed, cache_seconds=settings.key_cache_seconds)
    raise InvalidInputError(
        "KMS_PROVIDER", f"{settings.provider.value} is not available in this build yet")
