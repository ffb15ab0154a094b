"""Paths and loaders shared by the install tests (manifests/, the Helm chart, the image)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CHART = ROOT / "helm" / "qkms"
CRDS = ROOT / "crds"
NAMESPACE = "qkms-system"


def load_objects(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file, in order."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def object_key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def manifest_files() -> list[Path]:
    return sorted(MANIFESTS.glob("*.yaml"))


def manifest_objects() -> list[dict[str, Any]]:
    """The objects of manifests/, in `kubectl apply -f manifests/` order (file name order)."""
    return [obj for path in manifest_files() for obj in load_objects(path)]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects
               if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]
