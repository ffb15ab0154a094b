"""KeyManagementService: the seed's API, tying provider, lifecycle, catalog and audit.

Every decision is delegated to ``lifecycle`` and ``model.algorithms`` (pure);
this class orders the I/O: provider first, then the audit entry, then the
catalog, so a failure at any step leaves no half-made key visible (at worst
an orphaned, unreferenced provider record).  Mutations of one key are
serialized by a per-key lock; ``use_key`` reads an immutable snapshot and
takes no lock.

The service is one class built in layers, one concern per module, each using only the
layers below it: ``core`` (wiring and lookups) < ``audit_trail`` < ``sweep`` (intents) <
``keys`` (creation) < ``transitions`` (rotation, revocation, deletion) < ``operations``
(use) < ``health``. ``inputs``, ``results`` and ``tokens`` hold what they share.
"""

from __future__ import annotations

from .core import audit_folder
from .health import ServiceHealth
from .inputs import AUDIT_KEY, KEY_ID_RE, MAX_DERIVE_LENGTH, NAME_RE, SYSTEM_LABEL
from .results import OperationResult, RotationResult
from .tokens import TOKEN_PREFIX, make_token, parse_token, token_aad

__all__ = ["AUDIT_KEY", "KEY_ID_RE", "MAX_DERIVE_LENGTH", "NAME_RE", "SYSTEM_LABEL",
           "TOKEN_PREFIX", "KeyManagementService", "OperationResult", "RotationResult",
           "audit_folder", "make_token", "parse_token", "token_aad"]


class KeyManagementService(ServiceHealth):
    """The one key API: create, rotate, use, revoke, audit (see the layers above)."""
