"""Using keys: sign, verify, encrypt, decrypt, derive, encapsulate, decapsulate, each
checked against the version's state and usage, dispatched to the provider, audited."""

from __future__ import annotations

import asyncio
import base64
import logging
from functools import cached_property
from typing import Any

from qkms import lifecycle
from qkms.audit.entry import Actor, AuditEntry
from qkms.crypto.base import InvalidCiphertext
from qkms.errors import (
    DecryptionError,
    InvalidInputError,
    KeyStateError,
    QkmsError,
)
from qkms.issuer.ca import certified_spki
from qkms.model.algorithms import AlgorithmInfo, check_operation, resolve_algorithm
from qkms.model.enums import Operation, VersionState
from qkms.model.keys import KeyRecord, KeyVersion
from qkms.providers.base import KeyHandle
from qkms.signing import NO_OPTIONS, SignOptions
from qkms.signing import sign as sign_with_options
from qkms.signing import sign_many as sign_each
from qkms.signing import verify as verify_with_options

from .inputs import (
    MAX_DERIVE_LENGTH,
    _bytes,
    _context,
    _enum,
)
from .results import OperationResult
from .tokens import make_token, parse_token, token_aad
from .transitions import KeyTransitions

log = logging.getLogger("key-management:service")

_OPERATIONS = {op.value: op for op in Operation}  # the usual spelling, without _enum's work
MAX_PREPARED = 4096  # (key, version named, operation) answers kept; then begun afresh
Prepared = tuple[KeyVersion, AlgorithmInfo, KeyHandle, OperationResult]


class KeyOperations(KeyTransitions):
    """Using keys: each operation checked, dispatched to the provider, audited."""

    async def use_key(
        self,
        key_id: Any,
        operation: Any,
        data: Any = b"",
        *,
        actor: Any = None,
        signature: bytes | None = None,
        context: Any = None,
        salt: bytes | None = None,
        length: int = 32,
        signature_format: str | None = None,
        prehashed: bool = False,
        recovery_id: bool = False,
        low_s: bool | None = None,
        rsa_padding: str | None = None,
    ) -> Any:
        """Run one operation; VERIFY returns a bool, the others an ``OperationResult``.

        SIGN and VERIFY take the signature options of ``qkms.signing`` (ECDSA forms,
        prehashed digests, Ethereum recovery ids, RSA PKCS#1 v1.5)."""
        actor = Actor.parse(actor)
        op = _OPERATIONS.get(operation) if isinstance(operation, str) else None
        op_name = op.value if op is not None else str(operation).strip().upper()
        record = version = None
        try:
            if op is None:
                op = _enum(Operation, operation, "operation")
            options = SignOptions.parse(signature_format, prehashed, recovery_id, low_s,
                                        rsa_padding)
            record, named = self._resolve(key_id)
            try:
                version, result = await self._dispatch(op, record, named, data,
                                                       signature, context, salt, length,
                                                       options)
            except KeyStateError:
                # Another replica may have rotated or revoked it: decide on fresh state.
                fresh = await asyncio.to_thread(self.catalog.reload_one, record.name)
                if fresh is None or fresh.revision == record.revision:
                    raise
                record = fresh
                named = lifecycle.find_version(fresh, named.key_id) if named else None
                version, result = await self._dispatch(op, record, named, data,
                                                       signature, context, salt, length,
                                                       options)
        except QkmsError as exc:
            await self._record_failure(op_name, exc, actor, record=record, version=version)
            raise
        details = {"algorithm": version.algorithm}
        if isinstance(result, bool):
            details["valid"] = str(result).lower()
        await self._record(op_name, "success", actor, record, version,
                           digests=self._digests(op, data), details=details)
        return result

    async def sign_many(self, key_id: Any, messages: list[bytes], *,
                        actor: Any = None) -> list[OperationResult] | None:
        """SIGN every message (a batch's items, no signature options) with one version:
        one lookup and check, the signatures in one provider call (software: a tight
        loop in the crypto pool), an audit entry per message in one group commit.

        None where the version cannot be used or the provider fails: the caller then
        goes item by item (``use_key``), so that each item is answered and audited as
        alone.  Nothing was audited or returned by then, so nothing is done twice."""
        actor = Actor.parse(actor)
        try:
            record, named = self._resolve(key_id)
            version, info, handle, blank = self._prepared(record, named, Operation.SIGN)
            signatures = await sign_each(self.provider, handle, info, messages)
        except QkmsError:
            return None
        digest = self.audit_mac.current().digest  # one keyring look for the batch
        entry = AuditEntry(time=self.clock(), environment=self.environment.value,
                           operation="SIGN", result="success", actor=actor,
                           key_name=record.name, key_id=version.key_id,
                           version=version.version)
        algorithm = version.algorithm  # each entry its own dicts: listeners may keep them
        await self._store([entry.varied(digests={"data": digest(message)} if message else {},
                                        details={"algorithm": algorithm})
                           for message in messages])
        return [blank.varied(signature=signature) for signature in signatures]

    async def sign_bridge(self, key_id: Any, tbs: bytes, *, actor: Any = None,
                          rsa_padding: str | None = None) -> OperationResult:
        """SIGN with a version in its grace period the one thing it may still sign: a CA
        bridge, a TBSCertificate certifying the key's active version (the outgoing CA key
        cross-signs its successor).  ``key_id`` names that version.  Not on the data plane;
        audited as SIGN with ``purpose: ca_bridge``."""
        actor = Actor.parse(actor)
        record = version = None
        try:
            options = SignOptions.parse(rsa_padding=rsa_padding)
            record, version = self._resolve(key_id)
            active = lifecycle.active_version(record)
            if version is None or active is None or not lifecycle.in_grace(version, self.clock()):
                raise KeyStateError(f"{key_id}: only a version in its grace period, of a key "
                                    "with an active version, signs a CA bridge")
            pem = self.public_pem(active) or ""
            try:
                certified = certified_spki(_bytes(tbs, "data"))
            except ValueError:
                raise InvalidInputError("data", "is not a DER TBSCertificate") from None
            if certified != base64.b64decode("".join(pem.strip().splitlines()[1:-1])):
                raise InvalidInputError("data", f"a CA bridge from {version.key_id} must "
                                        f"certify the active version {active.key_id}")
            info = resolve_algorithm(version.algorithm)
            options.check(info, Operation.SIGN)
            signed = await sign_with_options(self.provider, self._handle(version), info, tbs,
                                             options, self._public_key(version))
        except QkmsError as exc:
            await self._record_failure("SIGN", exc, actor, record=record, version=version)
            raise
        await self._record("SIGN", "success", actor, record, version,
                           digests=self._digests(Operation.SIGN, tbs),
                           details={"algorithm": version.algorithm, "purpose": "ca_bridge",
                                    "certifies": active.key_id})
        return OperationResult(Operation.SIGN.value, version.key_id, record.name,
                               version.version, version.algorithm, signature=signed.signature)

    async def precheck(self, key_id: Any, operation: Any, *, actor: Any = None) -> None:
        """Refuse (and audit) what would fail for every item of a batch: an unknown key,
        another environment, an operation the key's usage does not allow."""
        try:
            op = _enum(Operation, operation, "operation")
            record, named = self._resolve(key_id)
            version = named or lifecycle.active_version(record) or record.current
            check_operation(resolve_algorithm(version.algorithm), record.usage, op)
        except QkmsError as exc:
            await self._record_failure(str(operation).upper(), exc, Actor.parse(actor),
                                       name=str(key_id))
            raise

    async def check_signature_options(self, key_id: Any, operation: Any,
                                      options: SignOptions, *, actor: Any = None) -> None:
        """Refuse (and audit) signature options the key's algorithm cannot honour, before
        a batch runs; the version named, else the active one, decides."""
        try:
            op = _enum(Operation, operation, "operation")
            record, named = self._resolve(key_id)
            version = named or lifecycle.active_version(record) or record.current
            options.check(resolve_algorithm(version.algorithm), op)
        except QkmsError as exc:
            await self._record_failure(str(operation).upper(), exc, Actor.parse(actor),
                                       name=str(key_id))
            raise

    def _digests(self, op: Operation, data: Any) -> dict[str, str]:
        """A keyed digest (HMAC-SHA256 under the environment's audit MAC key) of the data,
        so that the log proves what was handled without letting its readers test guesses."""
        if op in (Operation.DECRYPT,) or isinstance(data, OperationResult) or not data:
            return {}
        return {"data": self.audit_mac.digest(_bytes(data, "data"))}

    def _prepared(self, record: KeyRecord, named: KeyVersion | None,
                  op: Operation) -> Prepared:
        """What ``_usable`` decides for ``op`` on this record, with the version's algorithm,
        provider handle and an empty result: derived once per record and reused while the
        catalog hands out that same record object.

        ``_resolve`` still runs on every call (the catalog's freshness checks), and any
        change to the key (rotation, revocation, another replica's write, read back)
        gives a new record object, so a cached answer never outlives the record it was
        derived from.  Only ACTIVE versions are kept: their checks do not depend on the
        time, where a grace period's do (each call checks those again)."""
        key = (record.name, named.key_id if named is not None else None, op)
        hit = self._prepared_ops.get(key)
        if hit is not None and hit[0] is record:
            return hit[1]
        version = self._usable(record, named, op)
        prepared = (version, resolve_algorithm(version.algorithm), self._handle(version),
                    OperationResult(op.value, version.key_id, record.name, version.version,
                                    version.algorithm))
        if version.state is VersionState.ACTIVE:
            if len(self._prepared_ops) >= MAX_PREPARED:
                self._prepared_ops.clear()
            self._prepared_ops[key] = (record, prepared)
        return prepared

    @cached_property
    def _prepared_ops(self) -> dict[tuple[str, str | None, Operation],
                                    tuple[KeyRecord, Prepared]]:
        return {}

    def _usable(self, record: KeyRecord, named: KeyVersion | None, op: Operation) -> KeyVersion:
        """The version an operation runs on: the one named, else the active one."""
        version = named or lifecycle.active_version(record) or record.current
        check_operation(resolve_algorithm(version.algorithm), record.usage, op)
        lifecycle.check_use(version, op, self.clock())
        return version

    async def _dispatch(self, op: Operation, record: KeyRecord, named: KeyVersion | None,
                        data: Any, signature: bytes | None, context: Any,
                        salt: bytes | None, length: int,
                        options: SignOptions = NO_OPTIONS) -> tuple[KeyVersion, Any]:
        if op is Operation.VERIFY:
            return self._verify(record, named, _bytes(data, "data"), signature, options)
        if op is Operation.DECRYPT:
            options.check(resolve_algorithm(record.algorithm), op)
            return await self._decrypt(record, named, data, _context(context))
        version, info, handle, blank = self._prepared(record, named, op)
        options.check(info, op)
        result = blank.varied

        if op is Operation.SIGN:
            public = self._public_key(version) if options.given else None
            signed = await sign_with_options(self.provider, handle, info, _bytes(data, "data"),
                                             options, public)
            return version, result(signature=signed.signature, recovery_id=signed.recovery_id)
        if op is Operation.ENCRYPT:
            plaintext, aad = _bytes(data, "data"), token_aad(version.key_id, _context(context))
            counted = info.symmetric and self.budget.applies(info.name)
            if counted:  # random 96-bit nonces: counted (durably) before the encryption
                await self.budget.count(version.key_id)
            body = (await self.provider.encrypt(handle, plaintext, aad) if info.symmetric
                    else self._public_key(version).encrypt(plaintext, aad))
            if counted and self.budget.due(version.key_id):
                self._rotate_spent(record.name, version.key_id)
            return version, result(ciphertext=make_token(version.key_id, body))
        if op is Operation.ENCAPSULATE:
            ciphertext, secret = self._public_key(version).encapsulate()
            return version, result(ciphertext=ciphertext, shared_secret=secret)
        if op is Operation.DECAPSULATE:
            try:
                secret = await self.provider.decapsulate(handle, _bytes(data, "data"))
            except (InvalidCiphertext, ValueError):
                raise InvalidInputError("data", f"not a valid {info.name} ciphertext") from None
            return version, result(shared_secret=secret)
        if not isinstance(length, int) or not 1 <= length <= MAX_DERIVE_LENGTH:
            raise InvalidInputError("length", f"must be an integer from 1 to {MAX_DERIVE_LENGTH}")
        derived = await self.provider.derive(handle, _context(context) or _bytes(data, "data"),
                                             length, salt)
        return version, result(derived_key=derived)

    def _verify(self, record: KeyRecord, named: KeyVersion | None, data: bytes,
                signature: bytes | None,
                options: SignOptions = NO_OPTIONS) -> tuple[KeyVersion, bool]:
        if signature is None:
            raise InvalidInputError("signature", "is required for VERIFY")
        signature = _bytes(signature, "signature")
        now = self.clock()
        candidates = [named] if named else lifecycle.verifying_versions(record, now)
        if not candidates:
            self._usable(record, None, Operation.VERIFY)  # raises with the reason
        for version in candidates:
            self._usable(record, version, Operation.VERIFY)
            public = self._public_key(version)
            if options.given:
                options.check(resolve_algorithm(version.algorithm), Operation.VERIFY)
                options.check_digest(data)
                valid = verify_with_options(public, data, signature, options)
            else:
                valid = public.verify(data, signature)
            if valid:
                return version, True
        return candidates[0], False

    async def _decrypt(self, record: KeyRecord, named: KeyVersion | None, data: Any,
                       context: bytes) -> tuple[KeyVersion, OperationResult]:
        token_key_id, body = parse_token(data)
        version = lifecycle.find_version(record, token_key_id)
        if version is None or (named is not None and named.key_id != token_key_id):
            raise InvalidInputError(
                "data", f"ciphertext was made by {token_key_id}, not by a version of {record.name}")
        self._usable(record, version, Operation.DECRYPT)
        try:
            plaintext = await self.provider.decrypt(self._handle(version), body,
                                                    token_aad(version.key_id, context))
        except (InvalidCiphertext, ValueError):
            raise DecryptionError(
                f"Decryption failed: ciphertext for {version.key_id} is invalid, was tampered "
                "with, or its context differs") from None
        return version, OperationResult(Operation.DECRYPT.value, version.key_id, record.name,
                                        version.version, version.algorithm, plaintext=plaintext)
