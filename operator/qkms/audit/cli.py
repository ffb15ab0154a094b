"""``qkms audit``: verify, export, search, report and prune, offline, on the data dir.

Hooked into ``qkms.cli`` with ``add_parser(subparsers)`` and ``run(args, check)``.
These commands only read the audit folder (``prune`` deletes whole old
segments, which the running operator never writes), so they are safe to run
beside a live operator.  ``--data-dir`` is the qkms data dir (its
``<environment>/audit`` folder is used, ``--environment`` or ``QKMS_ENVIRONMENT``,
default dev), an environment folder or the audit folder itself; default
``$QKMS_DATA_DIR``, else ``.qkms``.

Exit codes: 0 on success; 1 when the chain does not verify (the message
names the first bad entry: sequence, CID and what is wrong) or a report
cannot be built; 2 for bad input.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from qkms.config import CommandConfig
from qkms.errors import InvalidInputError

from .checkpoint import SignatureCheck
from .search import Query, SearchStats, parse_moment, search

PROG = "qkms audit"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``audit`` and its actions to the ``qkms`` sub-command parsers."""
    audit = subparsers.add_parser("audit", help="verify, export, search and report on the "
                                                "audit chain")
    sub = audit.add_subparsers(dest="audit_action", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS,
                       help="qkms data dir or its audit folder (QKMS_DATA_DIR)")
        return p

    verify = action("verify", "check every CID, link, sequence number and checkpoint "
                              "signature; exit 0 with the count, or 1 naming the first bad entry")
    verify.add_argument("--car", type=Path, help="a CAR file: verify it (and compare it with "
                                                 "the data dir when one is given)")
    verify.add_argument("--public-key", type=Path,
                        help="pin the checkpoint key (raw or base64 file); default: the first "
                             "checkpoint's key (trust on first use)")
    verify.add_argument("--save-key", type=Path, help="write the pinned key here (base64)")
    verify.add_argument("--deep", action="store_true",
                        help="also decode every entry strictly and check it is canonical DAG-CBOR")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument("--anchor", action="append", default=[],
                        metavar="ipfs:URL|file:PATH|kube:KUBECONFIG",
                        help="check the log against what is kept elsewhere: checkpoint CIDs (an "
                             "IPFS node's anchor file, or a file of '<size> <CID>' lines) or the "
                             "checkpoint key the operator pinned in the cluster; a cut or "
                             "re-signed log fails as truncated, forked, key-changed or "
                             "unanchored; repeatable")
    export = action("export", "write the chain, or a range, as a CARv1 file for "
                              "`ipfs dag import`")
    export.add_argument("--car", required=True, help="output file (- for stdout)")
    export.add_argument("--from", dest="first", type=int, help="first sequence number")
    export.add_argument("--to", dest="last", type=int, help="last sequence number")
    find = action("search", "entries matching all filters, as JSON lines")
    find.add_argument("--key", help="key name or version key ID")
    find.add_argument("--actor", help="actor ID, or TYPE:ID")
    find.add_argument("--operation", help="CREATE, SIGN, ROTATE, REVOKE...")
    find.add_argument("--result", choices=["success", "denied", "error"])
    find.add_argument("--since", help="ISO 8601 date or time (inclusive)")
    find.add_argument("--until", help="ISO 8601 date or time (exclusive)")
    find.add_argument("--input", type=Path,
                      help="entries that handled this file's bytes (their keyed digest, "
                           "computed with the store's audit MAC keys; needs the master key)")
    find.add_argument("--master-key-file", type=Path,
                      help="for --input: the master key (default: found near the store)")
    report = action("report", "a SOC 2 or GDPR report from the verified, signed chain")
    report.add_argument("--standard", required=True, choices=["soc2", "gdpr"])
    report.add_argument("--since", help="ISO 8601 date or time (inclusive)")
    report.add_argument("--until", help="ISO 8601 date or time (exclusive; default now)")
    report.add_argument("--format", default="md", choices=["md", "json", "html"])
    report.add_argument("--policy", type=Path, help="KeyPolicy YAML (schedules, retention, "
                                                    "PQC deadline)")
    report.add_argument("--out", help="output file (default stdout)")
    report.add_argument("--public-key", type=Path, help="pin the checkpoint key")
    report.add_argument("--allow-unsigned", action="store_true",
                        help="include entries no checkpoint covers yet")
    prune = action("prune", "delete whole segments older than the retention period, at "
                            "checkpoint boundaries")
    prune.add_argument("--retention", help="ISO 8601 duration (default: the policy's "
                                           "auditPolicy.retentionPeriod, else P7Y)")
    prune.add_argument("--before", help="prune entries older than this date instead")
    prune.add_argument("--policy", type=Path, help="KeyPolicy YAML")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    return audit


def audit_dir(args: argparse.Namespace) -> Path | None:
    """The audit folder from ``--data-dir`` or ``QKMS_DATA_DIR`` (None if neither is set):
    the environment's chain in a data dir (``<data-dir>/<env>/audit``, as every command
    writes it), or an environment folder's, or the audit folder itself."""
    base = getattr(args, "data_dir", None)
    if base is None:
        base = CommandConfig.from_env().data_dir
    if base is None:
        return None
    base = Path(base)
    for folder in (base, base / _environment(args) / "audit", base / "audit"):
        if (folder / "segments").is_dir():
            return folder
    return base / _environment(args) / "audit"


def _environment(args: argparse.Namespace) -> str:
    return (getattr(args, "environment", None) or CommandConfig.from_env().environment
            or "dev").strip().lower()


def _folder(args: argparse.Namespace) -> Path:
    folder = audit_dir(args) or Path(".qkms") / _environment(args) / "audit"
    if not (folder / "segments").is_dir():
        raise InvalidInputError("--data-dir", f"no audit log in {folder} (no store here yet? "
                                              f"run `qkms serve` or `qkms keys create`)")
    return folder


def _public_key(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError("--public-key", f"cannot read {path}: {exc.strerror}") from None
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        return data


def _policy(path: Path | None) -> Any:
    if path is None:
        return None
    import yaml

    from qkms.model.policy import parse_key_policy

    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInputError("--policy", f"cannot read {path}: {exc}") from None
    for body in documents:
        if isinstance(body, dict) and body.get("kind") == "KeyPolicy":
            return parse_key_policy(body).spec
    raise InvalidInputError("--policy", f"{path} holds no KeyPolicy")


def _fingerprint(key: bytes | None) -> str | None:
    return "sha256:" + hashlib.sha256(key).hexdigest() if key else None


async def run(args: argparse.Namespace, check: SignatureCheck) -> int:
    """Run the ``qkms audit`` action in ``args``; return the exit code. ``check`` verifies
    checkpoint signatures (the command line gives ``qkms.crypto.verify_signature``): the
    audit trail imports no algorithm itself."""
    args.signature_check = check
    try:
        return _ACTIONS[args.audit_action](args)
    except InvalidInputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


def _verify(args: argparse.Namespace) -> int:
    from .car import compare, verify_car
    from .verify import verify_folder

    key = _public_key(args.public_key)
    folder = audit_dir(args)
    if args.car is not None and not args.car.is_file():
        raise InvalidInputError("--car", f"{args.car} is not a file")
    difference = car_result = None
    if args.car is not None and folder is None:
        result = verify_car(args.car, check=args.signature_check, public_key=key,
                            deep=args.deep)
    elif args.car is not None:
        result, car_result, difference = compare(_folder(args), args.car,
                                                 check=args.signature_check,
                                                 public_key=key, deep=args.deep)
    else:
        result = verify_folder(_folder(args), check=args.signature_check, public_key=key,
                               deep=args.deep)
    # Every writer's chain of the environment (one per data-plane worker or replica):
    # each verified on its own, all under the same checkpoint key.
    others = ([] if args.car is not None or folder is None else
              [(f, verify_folder(f, check=args.signature_check,
                                 public_key=key or result.public_key, deep=args.deep))
               for f in _chains(_folder(args))[1:]])
    finding = result.finding or (car_result.finding if car_result else None) or difference
    for other, verified in others:
        if finding is None and verified.finding is not None:
            finding = dataclasses.replace(verified.finding,
                                          detail=f"chain {other.name}: {verified.finding.detail}")
    if finding is None and args.anchor:
        finding = _anchored(args.anchor, _folder(args), result)
    if args.save_key and result.public_key:
        Path(args.save_key).write_text(base64.b64encode(result.public_key).decode() + "\n")
    if args.json:
        print(json.dumps({
            "ok": finding is None, "entries": result.entries, "first_seq": result.first_seq,
            "last_seq": result.last_seq, "head": result.head,
            "checkpoint": result.last_checkpoint.to_dict() if result.last_checkpoint else None,
            "unsigned": result.unsigned, "public_key": _fingerprint(result.public_key),
            "pinned": key is not None,
            "finding": finding.__dict__ if finding else None, "warnings": result.warnings,
            "car": {"entries": car_result.entries, "head": car_result.head}
            if car_result else None,
            "chains": [{"folder": str(f), "ok": v.finding is None, "entries": v.entries,
                        "head": v.head, "unsigned": v.unsigned} for f, v in others]},
            indent=2))
    else:
        for warning in result.warnings:
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
        if finding is None and key is None and result.public_key is not None:
            print(f"{PROG}: warning: the checkpoint key is NOT pinned: this log's own key "
                  f"{_fingerprint(result.public_key)} was trusted on first use, so a log "
                  f"rebuilt and re-signed under another key would pass too; pin it with "
                  f"--public-key (see --save-key) or check it with --anchor", file=sys.stderr)
        if finding is None:
            print(result.summary() + (f"; key {_fingerprint(result.public_key)}"
                                      if result.public_key else ""))
            for other, verified in others:
                print(f"{other.name}: {verified.summary()}")
            if car_result is not None:
                print(f"CAR matches: {car_result.entries} entries, head {car_result.head}")
        else:
            print(f"FAILED: {finding}")
    return 0 if finding is None else 1


def _anchored(sources: list[str], folder: Path, result: Any) -> Any:
    """The first contradiction between the verified log and its anchors, or None."""
    from . import anchors

    if result.public_key is None:
        return anchors.Finding("unanchored", None, None,
                               "the log has no signed checkpoint to compare with anchors")
    found: list[anchors.Anchor] = []
    lists = False  # whether any source holds checkpoint anchors (not only a pinned key)
    for source in sources:
        kind, _, where = source.partition(":")
        try:
            if kind == "ipfs" and where:
                found += anchors.read_ipfs(where, result.public_key)
                lists = True
            elif kind == "file" and where:
                found += anchors.read_file(Path(where))
                lists = True
            elif kind == "kube" and where:
                if problem := anchors.check_kube(Path(where), _chains(folder),
                                                 result.public_key):
                    return problem
            else:
                raise InvalidInputError("--anchor", f"{source!r}: use ipfs:URL, file:PATH "
                                                    "or kube:KUBECONFIG")
        except (OSError, ValueError) as exc:
            raise InvalidInputError("--anchor", str(exc)) from None
    if not lists:
        return None
    return anchors.check(found, anchors.log_checkpoints(folder), result.last_seq)


def _chains(folder: Path) -> list[Path]:
    """``folder``'s chain first, then the environment's other writers' chains (one per
    data-plane worker or replica, ``QKMS_AUDIT_WRITER``)."""
    from .generations import chain_folders

    return [folder, *(f for f in chain_folders(folder) if f.resolve() != folder.resolve())]


def car_paths(car: str, folders: list[Path]) -> list[str]:
    """One CAR per chain: ``car`` for the first, ``<stem>.<writer><suffix>`` for the others
    (a CAR holds one chain; its verifier orders blocks by sequence number)."""
    path = Path(car)
    return [car, *(str(path.with_name(f"{path.stem}.{f.name}{path.suffix or '.car'}"))
                   for f in folders[1:])]


def _export(args: argparse.Namespace) -> int:
    from .car import export_car

    folders = _chains(_folder(args))
    if args.car == "-" and len(folders) > 1:
        raise InvalidInputError("--car", f"{len(folders)} chains (one per writer): give a file "
                                         "name, each chain gets its own CAR beside it")
    for folder, car in zip(folders, car_paths(args.car, folders), strict=True):
        if car == "-":
            result = export_car(folder, sys.stdout.buffer, first=args.first, last=args.last)
            sys.stdout.buffer.flush()
        else:
            with open(car, "wb") as out:
                result = export_car(folder, out, first=args.first, last=args.last)
        where = "" if len(folders) == 1 else f"{car}: "
        print(f"{where}exported {result.entries} entries (seq {result.first_seq}.."
              f"{result.last_seq}) and {result.checkpoints} checkpoints; roots "
              f"{' '.join(result.roots)}", file=sys.stderr)
    return 0


def _search(args: argparse.Namespace) -> int:
    digests = None
    if args.input is not None:
        from .mac import keyring_near

        try:
            data = args.input.read_bytes()
        except OSError as exc:
            raise InvalidInputError("--input", f"cannot read {args.input}: {exc.strerror}"
                                    ) from None
        digests = frozenset(keyring_near(_folder(args), args.master_key_file).candidates(data))
    query = Query(key=args.key, actor=args.actor, operation=args.operation, result=args.result,
                  since=parse_moment(args.since, "--since"),
                  until=parse_moment(args.until, "--until"), digests=digests)
    out = sys.stdout
    bad: list[str] = []
    for folder in _chains(_folder(args)):  # every writer's chain, one after the other
        stats = SearchStats()
        for entry in search(folder, query, stats):
            out.write(json.dumps(entry, separators=(",", ":")) + "\n")
        bad += stats.bad or []
    out.flush()
    for problem in bad:
        print(f"{PROG}: integrity: {problem} (run qkms audit verify)", file=sys.stderr)
    return 1 if bad else 0


def _report(args: argparse.Namespace) -> int:
    from .reports import ReportError, build, render

    try:
        report = build(_folder(args), args.standard, parse_moment(args.since, "--since"),
                       parse_moment(args.until, "--until"), check=args.signature_check,
                       policy=_policy(args.policy),
                       public_key=_public_key(args.public_key),
                       allow_unsigned=args.allow_unsigned)
    except ReportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    text = render(report, args.format)
    if args.out in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    return 0


def _prune(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .retention import DEFAULT_RETENTION, cutoff_for, prune

    if args.before:
        before = parse_moment(args.before, "--before")
        assert before is not None
    else:
        policy = _policy(args.policy)
        retention = args.retention or (policy.audit_policy.retention_period if policy
                                       else DEFAULT_RETENTION)
        before = cutoff_for(retention)
    result = prune(_folder(args), before, dry_run=args.dry_run)
    print(json.dumps(asdict(result), indent=2))
    return 0


_ACTIONS = {"verify": _verify, "export": _export, "search": _search, "report": _report,
            "prune": _prune}
