"""``qkms keys ...`` and ``qkms algorithms``: keys in the local store, used directly."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from qkms.config import CommandConfig
from qkms.crypto import ethereum
from qkms.errors import InvalidInputError
from qkms.model.algorithms import resolve_algorithm

from .common import (
    _read_file,
    command,
    print_json,
    read_input,
    service,
    settings_from,
    write_output,
)


@command("keys create")
async def keys_create(args: argparse.Namespace) -> None:
    print_json(await service(args, create=True).create_key(
        usage=args.usage, algorithm=args.algorithm, owner=args.owner, name=args.name,
        rotation_schedule=args.rotation_schedule, grace_period=args.grace_period,
        actor={"type": "CLI", "id": args.actor}))


@command("keys import")
async def keys_import(args: argparse.Namespace) -> None:
    from qkms.crypto.importing import from_pem, from_raw

    if bool(args.pem) == bool(args.raw):
        raise InvalidInputError("--pem", "give exactly one of --pem FILE or --raw FILE")
    if args.pem:
        password = CommandConfig.from_env().import_password
        algorithm, private = from_pem(_read_file(args.pem, "--pem"),
                                      password.encode() if password else None)
        if args.algorithm and resolve_algorithm(args.algorithm).name != algorithm:
            raise InvalidInputError("--algorithm", f"the PEM holds a {algorithm} key")
    else:
        algorithm, private = from_raw(_read_file(args.raw, "--raw"),
                                      args.algorithm or "AES-256-GCM")
    print_json(await service(args, create=True).import_key(
        private=private, usage=args.usage, algorithm=algorithm, owner=args.owner,
        name=args.name, rotation_schedule=args.rotation_schedule,
        actor={"type": "CLI", "id": args.actor}))


@command("keys list")
async def keys_list(args: argparse.Namespace) -> None:
    keys = await service(args).list_keys()
    print_json([{k: getattr(m, k) for k in ("name", "key_id", "version", "algorithm", "usage",
                                           "state", "next_rotation")} for m in keys])


@command("keys show")
async def keys_show(args: argparse.Namespace) -> None:
    svc = service(args)
    print_json({"key": await svc.get_key(args.key), "versions": svc.get_record(args.key).versions})


@command("keys public")
async def keys_public(args: argparse.Namespace) -> None:
    svc = service(args)
    if args.format == "jwks":
        write_output(json.dumps(svc.jwks(args.key), indent=2) + "\n", args.out, "raw")
        return
    meta = await svc.get_key(args.key)
    if meta.public_key is None:
        raise InvalidInputError("key", f"{meta.name} is symmetric and has no public key")
    if args.format == "pem":
        if meta.public_key_pem is None:
            raise InvalidInputError("--format", f"{meta.algorithm} has no registered PEM form")
        write_output(meta.public_key_pem, args.out, "raw")
    elif args.format == "ethereum":
        address = ethereum.address_of(meta.algorithm, meta.public_key)
        if address is None:
            raise InvalidInputError("--format", f"only ECDSA-secp256k1 keys have an Ethereum "
                                    f"address, not {meta.algorithm}")
        write_output(address + "\n", args.out, "raw")
    else:
        write_output(meta.public_key, args.out, args.encoding)


@command("keys rotate")
async def keys_rotate(args: argparse.Namespace) -> None:
    print_json(await service(args).rotate_key(
        args.key, reason=args.reason, grace_period=args.grace_period,
        immediate=args.immediate, algorithm=args.algorithm,
        actor={"type": "CLI", "id": args.actor}))


@command("keys revoke")
async def keys_revoke(args: argparse.Namespace) -> None:
    print_json(await service(args).revoke_key(args.key, args.reason,
                                              actor={"type": "CLI", "id": args.actor}))


@command("keys delete")
async def keys_delete(args: argparse.Namespace) -> None:
    record = await service(args).schedule_key_deletion(args.key, args.window,
                                                       actor={"type": "CLI", "id": args.actor})
    print_json({"name": record.name, "versions": record.versions})


@command("keys cancel-deletion")
async def keys_cancel_deletion(args: argparse.Namespace) -> None:
    record = await service(args).cancel_key_deletion(args.key,
                                                     actor={"type": "CLI", "id": args.actor})
    print_json({"name": record.name, "versions": record.versions})


async def _use(args: argparse.Namespace, operation: str, data: Any, **options: Any) -> Any:
    return await service(args).use_key(args.key, operation, data,
                                       actor={"type": "CLI", "id": args.actor}, **options)


@command("keys sign")
async def keys_sign(args: argparse.Namespace) -> None:
    """``--recovery-id`` appends the id to the raw r||s: the 65-byte r||s||v form that
    libsecp256k1 and Ethereum tools take (v = 0 or 1)."""
    if args.recovery_id and args.format == "der":
        raise InvalidInputError("--format", "--recovery-id appends the id to a raw r||s "
                                "signature; leave --format out or use raw")
    result = await _use(args, "SIGN", read_input(args.input, "raw"),
                        signature_format=args.format, prehashed=args.prehashed,
                        recovery_id=args.recovery_id, low_s=True if args.low_s else None)
    signature = result.signature
    if result.recovery_id is not None:
        signature += bytes([result.recovery_id])
    write_output(signature, args.out, args.encoding)
    extra = f", recovery id {result.recovery_id}" if result.recovery_id is not None else ""
    print(f"signed with {result.key_id} (version {result.version}){extra}", file=sys.stderr)


@command("keys verify")
async def keys_verify(args: argparse.Namespace) -> None:
    signature = read_input(args.signature, args.encoding, "--signature")
    valid = await _use(args, "VERIFY", read_input(args.input, "raw"), signature=signature,
                       signature_format=args.format, prehashed=args.prehashed)
    print("valid" if valid else "invalid")
    if not valid:
        raise SystemExit(1)


@command("keys encrypt")
async def keys_encrypt(args: argparse.Namespace) -> None:
    result = await _use(args, "ENCRYPT", read_input(args.input, "raw"), context=args.context)
    write_output(result.ciphertext + "\n", args.out, "raw")


@command("keys decrypt")
async def keys_decrypt(args: argparse.Namespace) -> None:
    token = read_input(args.input, "raw").strip()
    result = await _use(args, "DECRYPT", token, context=args.context)
    write_output(result.plaintext, args.out, args.encoding)


@command("keys encapsulate")
async def keys_encapsulate(args: argparse.Namespace) -> None:
    result = await _use(args, "ENCAPSULATE", b"")
    write_output(result.ciphertext, args.out, args.encoding)
    write_output(result.shared_secret, args.secret_out, args.encoding)


@command("keys decapsulate")
async def keys_decapsulate(args: argparse.Namespace) -> None:
    result = await _use(args, "DECAPSULATE", read_input(args.input, args.encoding))
    write_output(result.shared_secret, args.out, args.encoding)


@command("keys derive")
async def keys_derive(args: argparse.Namespace) -> None:
    result = await _use(args, "DERIVE", b"", context=args.context, length=args.length)
    write_output(result.derived_key, args.out, args.encoding)


@command("keys rewrap")
async def keys_rewrap(args: argparse.Namespace) -> None:
    from qkms.store.layout import NoStoreError, environment_stores, has_records
    from qkms.store.rewrap import rewrap

    settings = settings_from(args)
    stores = environment_stores(settings.data_dir)  # one KEK seals every environment's store
    if not settings.kek_path.exists() and not any(has_records(s) for s in stores):
        raise NoStoreError(settings.data_dir)
    if args.new_master_key_file is not None and not args.new_master_key_file.is_file():
        raise InvalidInputError("--new-master-key-file",
                                f"{args.new_master_key_file} is not a file")
    count = await asyncio.to_thread(rewrap, settings, args.new_master_key_file, stores)
    print_json({"rewrapped": count, "master_key_file": str(settings.kek_path)})


@command("algorithms")
async def algorithms(args: argparse.Namespace) -> None:
    from qkms.model.algorithms import ALGORITHMS

    print_json([{"name": a.name, "aliases": list(a.aliases), "family": a.family.value,
                 "usages": sorted(u.value for u in a.usages), "library": a.library,
                 "standard": a.standard, "post_quantum": a.post_quantum, "hybrid": a.hybrid}
                for a in ALGORITHMS])
