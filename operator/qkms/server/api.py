"""The data plane: authenticate, authorize, then run key operations (one or a batch).

Requests name a key as ``{namespace}/{name}``; the namespace's environment
(its ``qkms.io/environment`` label) picks the service, and the caller's own
namespace must be in the same environment.  The token is checked first: a request
without a valid one looks nothing up and creates nothing.  Every refusal is audited with
the caller as actor before the answer leaves, bounded and aggregated per source
(``denials``), and only to an environment's service that exists already.  Binary
fields travel as base64.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from qkms.errors import Forbidden, InvalidInputError, QkmsError, Unauthenticated
from qkms.model.enums import Environment, Operation
from qkms.providers.software import TURN, batch_scope  # TURN: a batch's items at once
from qkms.service import MAX_DERIVE_LENGTH, KeyManagementService, OperationResult
from qkms.signing import NO_OPTIONS, SignOptions

from .auth import Authenticator, Authorizer, Identity
from .denials import Denials, bounded
from .errors import error_body, status_of

MAX_BATCH = 1000
OPERATIONS = {op.value.lower(): op for op in Operation}
_COMMON = {"context", "key_id"}
SIGN_OPTIONS = ("signature_format", "prehashed", "recovery_id", "low_s",  # qkms.signing
                "rsa_padding")
FIELDS: dict[Operation, set[str]] = {
    Operation.SIGN: _COMMON | {"input", *SIGN_OPTIONS},
    Operation.VERIFY: _COMMON | {"input", "signature", "signature_format", "prehashed",
                                 "rsa_padding"},
    Operation.ENCRYPT: _COMMON | {"input"},
    Operation.DECRYPT: _COMMON | {"ciphertext"},
    Operation.ENCAPSULATE: _COMMON,
    Operation.DECAPSULATE: _COMMON | {"ciphertext"},
    Operation.DERIVE: _COMMON | {"length", "salt"},
}


class KeyDirectory(Protocol):
    """Where keys live: the environment of a namespace and its environment's service."""

    async def environment(self, namespace: str) -> Environment | None: ...

    async def service(self, environment: Environment) -> KeyManagementService: ...


@dataclass
class Call:
    namespace: str
    name: str
    operation: str


def _b64(item: dict[str, Any], key: str, where: str, *, required: bool = False) -> bytes | None:
    if key not in item:
        if required:
            raise InvalidInputError(f"{where}{key}", "is required")
        return None
    value = item[key]
    if not isinstance(value, str):
        raise InvalidInputError(f"{where}{key}", "must be a base64 string")
    try:
        return binascii.a2b_base64(value, strict_mode=True)  # b64decode(validate=True), cheaper
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{where}{key}", "is not valid base64") from None


def _out(result: Any) -> dict[str, Any]:
    if isinstance(result, bool):
        return {"valid": result}
    assert isinstance(result, OperationResult)
    out: dict[str, Any] = {"key_id": result.key_id, "version": result.version,
                           "algorithm": result.algorithm}
    for field in ("signature", "plaintext", "shared_secret", "derived_key"):
        value = getattr(result, field)
        if value is not None:
            out[field] = base64.b64encode(value).decode()
    if result.ciphertext is not None:
        out["ciphertext"] = (result.ciphertext if isinstance(result.ciphertext, str)
                             else base64.b64encode(result.ciphertext).decode())
    if result.recovery_id is not None:
        out["recovery_id"] = result.recovery_id
    return out


def _failed(exc: QkmsError) -> dict[str, Any]:
    """A batch item's answer when it failed: the error body, with its HTTP status."""
    return {**error_body(exc), "status": status_of(exc)}


def _options(item: dict[str, Any], where: str) -> SignOptions:
    """SIGN/VERIFY signature options, their types checked; the field named with ``where``."""
    if not any(option in item for option in SIGN_OPTIONS):
        return NO_OPTIONS  # the usual case, without parsing
    try:
        return SignOptions.parse(**{k: item[k] for k in SIGN_OPTIONS if k in item})
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}{exc.field}", exc.reason) from None


_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_KEY_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
ANONYMOUS = {"type": "ANONYMOUS", "id": "none"}


class DataPlane:
    def __init__(self, directory: KeyDirectory, authenticator: Authenticator,
                 authorizer: Authorizer,
                 observe: Callable[[str, str, str, float], Awaitable[None] | None] | None = None,
                 *, registry: Any = None, denials: Denials | None = None) -> None:
        """``registry``: the services that exist (denials are audited only to those)."""
        self.directory = directory
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.observe = observe
        self.registry = registry if registry is not None else getattr(directory, "registry",
                                                                      None)
        self.denials = denials or Denials()

    async def identify(self, authorization: str | None) -> Identity:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthenticated("a bearer token is required")
        token = authorization[len("Bearer "):].strip()
        if not token:
            raise Unauthenticated("a bearer token is required")
        return await self.authenticator.authenticate(token)

    def existing(self, environment: Environment | None) -> KeyManagementService | None:
        """The environment's service if it is open already; never one made for a refusal."""
        if environment is None or self.registry is None:
            return None
        return self.registry.existing(environment)

    async def deny(self, call: Call, operation: Operation | None, identity: Identity | None,
                   exc: QkmsError, environment: Environment | None, source: str) -> None:
        """Audit a refusal, bounded and aggregated (``Denials``), to an existing service."""
        actor = getattr(exc, "actor", None) or (identity.actor if identity else ANONYMOUS)
        who = f"{actor['type']}:{actor['id']}" if actor is not ANONYMOUS else f"ip:{source}"
        await self.denials.record(self.existing(environment), who,
                                  operation.value if operation else "UNKNOWN",
                                  f"{call.namespace}/{call.name}", actor, exc)

    async def path_environment(self, namespace: str) -> Environment | None:
        """The environment of a namespace named in a path, looked up only for a valid name."""
        if not _NAMESPACE.fullmatch(namespace):
            return None
        return await self.directory.environment(namespace)

    async def authenticate(self, call: Call, authorization: str | None,
                           source: str = "unknown") -> Identity:
        """Who calls: checked before the body is read or anything is looked up; a refusal is
        audited (bounded, aggregated) only where the path's environment has a service."""
        try:
            return await self.identify(authorization)
        except Unauthenticated as exc:
            await self.deny(call, OPERATIONS.get(call.operation), None, exc,
                            await self.path_environment(call.namespace), source)
            raise

    async def handle(self, call: Call, body: Any, authorization: str | None = None,
                     source: str = "unknown", *,
                     identity: Identity | None = None) -> dict[str, Any]:
        """Run a call for ``identity`` (``authenticate``d already), else for the token."""
        operation = OPERATIONS.get(call.operation)
        key = f"{call.namespace}/{call.name}"
        # Authenticate before anything else: an unauthenticated request learns nothing,
        # creates nothing and costs the audit log at most one counted entry per interval.
        if identity is None:
            identity = await self.authenticate(call, authorization, source)
        if operation is None:
            raise InvalidInputError("operation", f"{bounded(call.operation, 64)!r} is not one "
                                    f"of {', '.join(OPERATIONS)}")
        if not _NAMESPACE.fullmatch(call.namespace):
            raise InvalidInputError("namespace", "must be a Kubernetes namespace name")
        if not _KEY_NAME.fullmatch(call.name):
            raise InvalidInputError("name", "must be a lower-case DNS name of at most 253 "
                                            "characters")
        environment = await self.directory.environment(call.namespace)
        try:
            await self._authorize(identity, call, environment)
        except QkmsError as exc:
            await self.deny(call, operation, identity, exc, environment, source)
            raise
        assert environment is not None  # _authorize refuses a namespace without one
        service = await self.directory.service(environment)  # authorized: it may be made now
        if not isinstance(body, dict):
            raise InvalidInputError("body", "must be a JSON object")
        if "batch_input" in body:
            if set(body) != {"batch_input"}:
                extra = sorted(set(body) - {"batch_input"})[0]
                raise InvalidInputError(extra, "unknown field beside batch_input")
            items = body["batch_input"]
            if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
                raise InvalidInputError("batch_input", f"must be a list of 1 to {MAX_BATCH} items")
            # Structural errors refuse the whole batch (400, naming the item); what can only
            # fail at run time (a bad signature, a tampered token) is reported per item.
            calls = [self._arguments(operation, item, f"batch_input[{i}].")
                     for i, item in enumerate(items)]
            await service.precheck(key, operation, actor=identity.actor)
            plain = operation is Operation.SIGN and not any(  # no version named, no options
                "key_id" in item or any(o in item for o in SIGN_OPTIONS) for item in items)
            for i, item in enumerate(items if not plain else ()):  # plain: nothing to check
                self._own_version(service, key, item, f"batch_input[{i}].")
                await self._check_options(service, key, operation, item, identity,
                                          f"batch_input[{i}].")
            if plain:
                signed = await self._sign_many(service, key, calls, identity)
                if signed is not None:
                    return {"batch_results": signed}
            # Item by item: in chunks, each run concurrently (its items' audit entries share
            # one group-commit fsync), with every key loaded once for the whole batch and
            # the private operations in the crypto pool: the loop stays free for other
            # callers and probes however large the batch.  Results keep the items' order.
            results: list[dict[str, Any]] = []
            pairs = list(zip(items, calls, strict=True))
            with batch_scope():
                for start in range(0, len(pairs), TURN):
                    results += await asyncio.gather(*(
                        self._one(service, key, operation, item, kwargs, identity, batch=True)
                        for item, kwargs in pairs[start:start + TURN]))
                    await asyncio.sleep(0)  # a turn for everyone else between chunks
            return {"batch_results": results}
        kwargs = self._arguments(operation, body, "")
        self._own_version(service, key, body, "")
        return await self._one(service, key, operation, body, kwargs, identity, batch=False)

    async def _authorize(self, identity: Identity, call: Call,
                         environment: Environment | None) -> None:
        verb = call.operation
        if not await self.authorizer.allowed(identity, verb, call.namespace, call.name):
            raise Forbidden(f"{identity.username} may not {verb} managedkeys.qkms.io "
                            f"{call.name} in namespace {call.namespace}")
        caller_ns = identity.namespace
        if caller_ns is None:
            raise Forbidden(f"{identity.username} is not a ServiceAccount, so its "
                            "environment is unknown")
        caller_env = await self.directory.environment(caller_ns)
        if caller_env is None or caller_env is not environment:
            raise Forbidden(
                f"caller namespace {caller_ns} is in environment "
                f"{caller_env.value if caller_env else 'none'}, the key "
                f"{call.namespace}/{call.name} in {environment.value if environment else 'none'}")

    @staticmethod
    async def _sign_many(service: KeyManagementService, key: str,
                         calls: list[dict[str, Any]],
                         identity: Identity) -> list[dict[str, Any]] | None:
        """A batch of plain SIGNs (no version named, no options), the common case: one
        version, one provider call, one group commit (``service.sign_many``).  None
        where it must go item by item."""
        try:
            signed = await service.sign_many(key, [kwargs["data"] for kwargs in calls],
                                             actor=identity.actor)
        except QkmsError as exc:  # the audit refused (fail-closed): so does every item
            return [_failed(exc)] * len(calls)
        return None if signed is None else [_out(result) for result in signed]

    async def _one(self, service: KeyManagementService, key: str, operation: Operation,
                   item: dict[str, Any], kwargs: dict[str, Any], identity: Identity, *,
                   batch: bool) -> dict[str, Any]:
        try:
            result = await service.use_key(item.get("key_id") or key, operation,
                                           actor=identity.actor, **kwargs)
        except QkmsError as exc:
            if not batch:
                raise
            return _failed(exc)
        return _out(result)

    @staticmethod
    async def _check_options(service: KeyManagementService, key: str, operation: Operation,
                             item: dict[str, Any], identity: Identity, where: str) -> None:
        """Options the key's algorithm cannot honour refuse the whole batch, naming the item."""
        options = _options(item, where) if operation in (Operation.SIGN, Operation.VERIFY) \
            else SignOptions()
        if not options.given:
            return
        try:
            await service.check_signature_options(item.get("key_id") or key, operation,
                                                   options, actor=identity.actor)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}{exc.field}", exc.reason) from None

    @staticmethod
    def _own_version(service: KeyManagementService, key: str, item: dict[str, Any],
                     where: str) -> None:
        """A ``key_id`` must be a version of the key in the path: authorization was
        decided for that key, and must not be sidestepped by naming another."""
        key_id = item.get("key_id")
        if key_id is None:
            return
        name = service.name_of_key_id(key_id)
        if name != key:
            raise InvalidInputError(f"{where}key_id", f"is not a version of {key}")

    @staticmethod
    def _arguments(operation: Operation, item: Any, where: str) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise InvalidInputError(where.rstrip(".") or "body", "must be a JSON object")
        unknown = sorted(set(item) - FIELDS[operation])
        if unknown:
            raise InvalidInputError(f"{where}{unknown[0]}", "unknown field")
        if "key_id" in item and not isinstance(item["key_id"], str):
            raise InvalidInputError(f"{where}key_id", "must be a string")
        kwargs: dict[str, Any] = {"context": _b64(item, "context", where)}
        if operation is Operation.DECRYPT:
            token = item.get("ciphertext")
            if not isinstance(token, str) or not token:
                raise InvalidInputError(f"{where}ciphertext", "is required (the ENCRYPT token)")
            kwargs["data"] = token
        elif operation is Operation.DECAPSULATE:
            kwargs["data"] = _b64(item, "ciphertext", where, required=True)
        elif operation in (Operation.ENCAPSULATE, Operation.DERIVE):
            kwargs["data"] = b""
        else:
            kwargs["data"] = _b64(item, "input", where, required=True)
        if operation is Operation.VERIFY:
            kwargs["signature"] = _b64(item, "signature", where, required=True)
        if operation in (Operation.SIGN, Operation.VERIFY):
            options = _options(item, where)
            if options.prehashed and len(kwargs["data"]) != 32:
                raise InvalidInputError(f"{where}input", "with prehashed, must be a 32-byte "
                                        f"digest, got {len(kwargs['data'])} bytes")
            kwargs.update(signature_format=options.signature_format,
                          prehashed=options.prehashed, recovery_id=options.recovery_id,
                          low_s=options.low_s, rsa_padding=options.rsa_padding)
        if operation is Operation.DERIVE:
            length = item.get("length", 32)
            if not isinstance(length, int) or isinstance(length, bool) \
                    or not 1 <= length <= MAX_DERIVE_LENGTH:
                raise InvalidInputError(f"{where}length",
                                        f"must be an integer from 1 to {MAX_DERIVE_LENGTH}")
            kwargs["length"] = length
            kwargs["salt"] = _b64(item, "salt", where)
        return kwargs
