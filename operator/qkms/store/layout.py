"""Where a data dir keeps things: one layout for ``qkms serve``, the CLI and the Python API.

```
<data-dir>/master.key              the master key (KEK), shared by every environment
<data-dir>/backup.key              the backup key (``qkms backup``), kept apart from it
<data-dir>/<environment>/store/    that environment's sealed records
<data-dir>/<environment>/audit/    that environment's audit chain
<data-dir>/projections/            ``qkms serve``'s projections (its default ``--out``)
```

``--environment`` (``QKMS_ENVIRONMENT``, default ``dev``) picks the folder.  The
checks here keep a store and its master key together: a KEK is never created
beside records that are already sealed, and a store opened under the wrong KEK
is named as such (with where its KEK was found), not reported as tampering.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from qkms.errors import KekMismatchError, QkmsError

from .kek import MAGIC, MAGICS, kek_id, parse_kek
from .records import SUFFIX

NEW_STORE_HINT = "run `qkms serve` or `qkms keys create`"


class NoStoreError(QkmsError):
    code = "no_store"

    def __init__(self, root: Path, environment: str | None = None) -> None:
        hint = NEW_STORE_HINT if environment is None else (
            f"run `qkms serve` (with a KeyPolicy for {environment}) or "
            f"`qkms --environment {environment} keys create`")
        super().__init__(f"no store here yet ({_display(root)}): {hint}")


def record_files(store: Path) -> Iterator[Path]:
    """Every sealed record file of a file store (``<store>/<kind>/<name>.rec``)."""
    if not store.is_dir():
        return
    for kind in sorted(store.iterdir()):
        if kind.is_dir():
            yield from sorted(kind.glob(f"*{SUFFIX}"))


def has_records(store: Path) -> bool:
    return next(record_files(store), None) is not None


def sealed_under(path: Path) -> str | None:
    """The KEK ID (hex) a record file names in its header, or None if it is not sealed."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(MAGIC) + 8)
    except OSError:
        return None
    return head[len(MAGIC):].hex() if head.startswith(MAGICS) and len(head) == 12 else None


def _kek_ids(path: Path) -> dict[str, Path]:
    """KEK IDs of a KEK file and of its ``.old`` twin (mid-rewrap), by ID."""
    found = {}
    for candidate in (path, path.with_suffix(".old")):
        try:
            found[kek_id(parse_kek(candidate.read_bytes(), str(candidate))).hex()] = candidate
        except (OSError, QkmsError):
            continue
    return found


def _candidates(near: Iterable[Path]) -> Iterator[Path]:
    """KEK files a store's master key could be in: beside it, and up to two folders up."""
    seen: set[Path] = set()
    for start in near:
        start = start.resolve()
        for folder in (start, *list(start.parents)[:2]):
            for path in (folder / "master.key", *sorted(folder.glob("*/master.key"))):
                if path not in seen and path.is_file():
                    seen.add(path)
                    yield path


def find_kek(wanted: str, near: Iterable[Path]) -> Path | None:
    """The KEK file whose ID is ``wanted``, looked for near the given folders."""
    for path in _candidates(near):
        if wanted in _kek_ids(path):
            return path
    return None


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _hint(found: Path | None) -> str:
    if found is None:
        return "that master key was not found near it: give it with --master-key-file"
    if found.name == "master.key":
        return (f"use --data-dir {_display(found.parent)} (or --master-key-file "
                f"{_display(found)})")
    return f"use --master-key-file {_display(found)}"


def _sealed_stores(kek_path: Path, store: Path) -> list[Path]:
    """The store itself, and any store in the KEK's own folder (``store/``, ``*/store/``)."""
    folder = kek_path.parent
    stores = [store, folder / "store", *sorted(folder.glob("*/store"))]
    unique: list[Path] = []
    for path in stores:
        if path.is_dir() and path.resolve() not in {p.resolve() for p in unique}:
            unique.append(path)
    return [p for p in unique if has_records(p)]


def check_kek(kek_path: Path, store: Path) -> None:
    """Before a file store is opened: refuse to create a KEK beside sealed records, and refuse
    a KEK that sealed none of the store's records (naming where the right one is)."""
    if not kek_path.exists():
        for sealed in _sealed_stores(kek_path, store):
            wanted = next(filter(None, map(sealed_under, record_files(sealed))), None)
            if wanted is None:
                continue
            found = find_kek(wanted, [sealed, kek_path.parent])
            raise KekMismatchError(
                f"no master key at {_display(kek_path)}, but {_display(sealed)} holds records "
                f"sealed under KEK {wanted}"
                + (f" (found at {_display(found)}): {_hint(found)}" if found else
                   ": give it with --master-key-file")
                + "; qkms will not create a new master key beside sealed records")
        return
    known = _kek_ids(kek_path)
    if not known:
        return  # an unreadable KEK file: load_or_create_kek says what is wrong with it
    wanted = None
    for path in record_files(store):
        sealer = sealed_under(path)
        if sealer is None:
            continue  # not a sealed record at all: the catalog reports it by name
        if sealer in known:
            return  # at least one record opens: a partial mismatch is per-record corruption
        wanted = wanted or sealer
    if wanted is None:
        return
    found = find_kek(wanted, [store, kek_path.parent])
    raise KekMismatchError(
        f"this store ({_display(store)}) was sealed under KEK {wanted}"
        + (f", found at {_display(found)}" if found else "")
        + f"; this command used {_display(kek_path)} (KEK {next(iter(known))}): {_hint(found)}")


def environment_stores(root: Path) -> list[Path]:
    """Every environment's store folder under a data dir (what one master key seals)."""
    from qkms.model.enums import Environment

    return [root / env.value / "store" for env in Environment
            if (root / env.value / "store").is_dir()]


def require_store(root: Path, env_dir: Path, kek_path: Path) -> None:
    """For commands that use keys but create none: there must be a store to use, in this
    layout.  An empty folder is not an error to decode but a first step to take."""
    legacy = root / "store"
    if has_records(legacy) and not has_records(env_dir / "store"):
        wanted = next(filter(None, map(sealed_under, record_files(legacy))), None)
        found = find_kek(wanted, [legacy]) if wanted else None
        if found is not None and found.parent.resolve() != root.resolve():
            raise QkmsError(  # pointed at an environment's folder rather than the data dir
                f"{_display(root)} is an environment's folder of the data dir "
                f"{_display(found.parent)} (its records are sealed under the master key "
                f"{_display(found)}): use --data-dir {_display(found.parent)} "
                f"--environment {root.name}")
        raise QkmsError(
            f"{_display(legacy)} is in the layout of an earlier qkms (one store per data dir); "
            f"each environment now has its own folder: mkdir -p {_display(env_dir)} && mv "
            f"{_display(legacy)} {_display(root / 'audit')} {_display(env_dir)}/")
    if not kek_path.exists() and not has_records(env_dir / "store"):
        raise NoStoreError(root)
    if not (env_dir / "store").is_dir():  # other environments' stores only: open none here,
        raise NoStoreError(env_dir, env_dir.name)  # as opening would create its folders
