"""Anchors: checkpoint CIDs kept outside the audit folder, so cutting or re-signing it shows.

A checkpoint signs the log up to its size, but someone who can write the audit folder can
cut the log *and* its checkpoint file back to an earlier checkpoint (every signature
still holds), or rebuild the whole log under a fresh key (trust on first use accepts it).
Only a record of checkpoints that the folder's writer cannot rewind catches either.

An anchor is one line, ``<size> <checkpoint CID>``. The IPFS pusher appends one to a file
in the node's MFS, ``/qkms-audit/<key fingerprint>/anchors``, after the checkpoint block
itself is stored there, so the node holds both the anchor and what it names. ``qkms audit
verify --anchor ipfs:URL`` (or ``--anchor file:PATH``, any copy of the lines) then checks
every anchored checkpoint against the verified log:

- the log ends before an anchored checkpoint: ``truncated``;
- the log has another checkpoint at that size, or none: ``forked``;
- no anchor at all for the log's key: ``unanchored`` (a log re-signed under a new key has
  none), which fails verification, since an anchor source was asked for.

In a cluster, ``--anchor kube:KUBECONFIG`` reads two ConfigMaps in ``qkms-system``. Each
operator replica publishes its own writers' latest checkpoints in ``qkms-audit-anchors``,
one key per writer, ``<environment>.<writer>`` -> ``<size> <CID>`` (k8s/audit_anchors.py).
Each local chain (one per writer: the folder's name) is checked against its writer's entry
as above: ``truncated`` or ``forked``, naming the writer; once the environment has entries,
a local chain with a checkpoint but none of its own is ``unanchored``. (Writers of other
replicas, whose volumes are elsewhere, are not expected locally. An entry lags its writer's
newest checkpoint by the publishing interval, a few seconds.) Then the log's checkpoint key
is checked against the one the operator pinned, once, in ``qkms-audit-pins``: another key
is ``key-changed``, none pinned is ``unanchored``. (ManagedKey statuses and Events name
entry CIDs too, but with one audit log per replica an entry may sit in another replica's
log, so they are not anchors of one log: the per-writer checkpoints are.)

The anchor is only as strong as the separation between the audit volume and the IPFS
node: the qkms process appends and never rewrites, but anyone holding the node's RPC API
could. Pruning keeps anchors: a pruned log still holds the checkpoint it starts from.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import parse_checkpoint
from .encoding import decode, is_entry
from .store import iter_log
from .verify import Finding

MFS_ROOT = "/qkms-audit"


@dataclass(frozen=True, order=True)
class Anchor:
    size: int
    cid: str

    def line(self) -> str:
        return f"{self.size} {self.cid}\n"


def key_fingerprint(public_key: bytes) -> str:
    """How anchor files are named: the first 16 bytes of SHA-256 of the checkpoint key."""
    return hashlib.sha256(public_key).hexdigest()[:32]


def mfs_path(public_key: bytes) -> str:
    return f"{MFS_ROOT}/{key_fingerprint(public_key)}/anchors"


def parse_anchors(text: str, source: str) -> list[Anchor]:
    """Anchor lines; blank lines and ``#`` comments are skipped. ``ValueError`` names the
    source and line of anything else."""
    anchors = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1].startswith("b"):
            raise ValueError(f"{source} line {number}: expected '<size> <checkpoint CID>'")
        anchors.append(Anchor(int(parts[0]), parts[1]))
    return sorted(set(anchors))


def check(anchors: Iterable[Anchor], checkpoints: Mapping[int, str],
          last_seq: int | None) -> Finding | None:
    """The first anchored checkpoint the verified log contradicts, or None.

    `checkpoints` maps each size the log has a checkpoint for to that checkpoint's CID.
    """
    anchors = sorted(anchors)
    if not anchors:
        return Finding("unanchored", None, None,
                       "no anchor names this log's checkpoint key: the log may have been "
                       "re-signed under another key, or never anchored")
    for anchor in anchors:
        local = checkpoints.get(anchor.size)
        if local == anchor.cid:
            continue
        if local is None and (last_seq or 0) < anchor.size:
            return Finding("truncated", (last_seq or 0) + 1, anchor.cid,
                           f"the log ends at {last_seq or 0} but checkpoint {anchor.cid} at "
                           f"{anchor.size} was anchored")
        return Finding("forked", anchor.size, anchor.cid,
                       f"anchored checkpoint {anchor.cid} at {anchor.size} is not in the log "
                       f"(it has {local or 'no checkpoint'} there)")
    return None


def log_checkpoints(root: Path) -> dict[int, str]:
    """Each checkpoint the log itself holds, by size (after truncation, the log is what is
    left to compare)."""
    return {cp.size: cp.cid_text for cp in (parse_checkpoint(r.cid, r.block)
                                             for r in iter_log(root) if not is_entry(r.block))}


def log_environment(root: Path) -> str | None:
    """The environment the log's entries belong to (the first entry's)."""
    for record in iter_log(root):
        if is_entry(record.block):
            value = decode(record.block)
            return str(value["environment"]) if isinstance(value, dict) else None
    return None


def read_kube_pin(kubeconfig: Path, environment: str,
                  namespace: str = "qkms-system") -> bytes | None:
    """The checkpoint key the operator pinned for `environment` in its ConfigMap
    ``qkms-audit-pins`` (see k8s/kube_api.py), or None when none is pinned."""
    value = (_kube_config_map(kubeconfig, "qkms-audit-pins", namespace) or {}).get(environment)
    return base64.b64decode(value) if value else None


def _kube_config_map(kubeconfig: Path, name: str, namespace: str) -> dict[str, str] | None:
    """The data of ConfigMap `namespace/name`, or None when there is none."""
    try:
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException
    except ImportError:
        raise OSError("reading a cluster needs the kubernetes client: "
                      "pip install 'qkms[operator]'") from None
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    try:
        found = core.read_namespaced_config_map(name, namespace, _request_timeout=10)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise OSError(f"ConfigMap {namespace}/{name}: HTTP {exc.status}") from None
    return dict(found.data or {})


def read_kube_anchors(kubeconfig: Path, environment: str,
                      namespace: str = "qkms-system") -> dict[str, Anchor]:
    """Writer -> its latest published checkpoint, from the ConfigMap ``qkms-audit-anchors``
    the operator's replicas write (k8s/audit_anchors.py)."""
    data = _kube_config_map(kubeconfig, "qkms-audit-anchors", namespace) or {}
    prefix = f"{environment}."
    found = {}
    for key, value in sorted(data.items()):
        if key.startswith(prefix):
            (anchor,) = parse_anchors(value, f"ConfigMap {namespace}/qkms-audit-anchors {key}")
            found[key[len(prefix):]] = anchor
    return found


def log_last_seq(root: Path) -> int | None:
    """The sequence number of the log's last entry (None: no entry)."""
    last = None
    for record in iter_log(root):
        if is_entry(record.block):
            value = decode(record.block)
            if isinstance(value, dict):
                last = int(value["seq"])
    return last


def check_writers(published: Mapping[str, Anchor], chains: Iterable[Path],
                  where: str) -> Finding | None:
    """Each local chain against its writer's published checkpoint (see the module)."""
    for folder in chains:
        checkpoints = log_checkpoints(folder)
        anchor = published.get(folder.name)
        if anchor is None:
            if published and checkpoints:
                return Finding("unanchored", None, None,
                               f"writer {folder.name}: its checkpoints are not published in "
                               f"{where}: the chain may be forged")
            continue
        finding = check([anchor], checkpoints, log_last_seq(folder))
        if finding is not None:
            return Finding(finding.kind, finding.seq, finding.cid,
                           f"writer {folder.name}: {finding.detail} (in {where})")
    return None


def check_kube(kubeconfig: Path, chains: list[Path], public_key: bytes) -> Finding | None:
    """``--anchor kube:KUBECONFIG``: every local writer's chain against its published
    checkpoint, then the log's checkpoint key against the pinned one."""
    environment = log_environment(chains[0]) or "dev"
    where = f"the cluster of {kubeconfig} ({environment})"
    finding = check_writers(read_kube_anchors(kubeconfig, environment), chains, where)
    return finding or check_pin(read_kube_pin(kubeconfig, environment), public_key, where)


def check_pin(pinned: bytes | None, public_key: bytes, where: str) -> Finding | None:
    if pinned is None:
        return Finding("unanchored", None, None, f"no checkpoint key is pinned in {where}")
    if pinned != public_key:
        return Finding("key-changed", None, None,
                       f"the log's checkpoint key is not the one pinned in {where}: the log "
                       "was rebuilt or re-signed")
    return None


def read_file(path: Path) -> list[Anchor]:
    return parse_anchors(path.read_text(), str(path))


def read_ipfs(endpoint: str, public_key: bytes, timeout: float = 10.0) -> list[Anchor]:
    """The anchor lines an IPFS node holds for `public_key` (none if it has no file)."""
    path = mfs_path(public_key)
    url = f"{endpoint.rstrip('/')}/api/v0/files/read?" + urllib.parse.urlencode({"arg": path})
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"),  # noqa: S310
                                    timeout=timeout) as reply:
            return parse_anchors(reply.read().decode(), f"{endpoint}{path}")
    except urllib.error.HTTPError as exc:
        message = exc.read().decode(errors="replace")
        if "does not exist" in message or "not exist" in message:
            return []
        raise OSError(f"IPFS node {endpoint}: HTTP {exc.code}: "
                      f"{_message(message)}") from None


def _message(body: str) -> str:
    try:
        return str(json.loads(body).get("Message", body))[:200]
    except ValueError:
        return body[:200]


async def publish(session: object, endpoint: str, public_key: bytes, anchor: Anchor) -> None:
    """Append one anchor line to the node's MFS file for this key (made if missing)."""
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    path = mfs_path(public_key)
    base = endpoint.rstrip("/") + "/api/v0/files/"
    async with session.post(base + "stat", params={"arg": path}) as reply:
        size = int((await reply.json(content_type=None)).get("Size", 0)) \
            if reply.status == 200 else 0
    form = aiohttp.FormData()
    form.add_field("file", anchor.line().encode(), filename="anchors",
                   content_type="application/octet-stream")
    params = {"arg": path, "create": "true", "parents": "true", "offset": str(size)}
    async with session.post(base + "write", params=params, data=form) as reply:
        if reply.status != 200:
            raise OSError(f"anchor write HTTP {reply.status}: {_message(await reply.text())}")
