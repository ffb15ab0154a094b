"""Helpers for the suite tests: key cache, vector readers, a tiny DER reader.

Key generation is the slow part (RSA-4096 above all), so each algorithm's
keys are generated once per session (see conftest) and shared; tests never
mutate them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import cryptography_vectors

from qkms.crypto import suite_for
from qkms.model.algorithms import ALGORITHMS
from qkms.model.enums import Family

VECTORS = Path(__file__).resolve().parent.parent / "vectors"

NAMES = [a.name for a in ALGORITHMS]


def names(*families: Family, hybrid: bool | None = None) -> list[str]:
    return [
        a.name
        for a in ALGORITHMS
        if a.family in families and (hybrid is None or a.hybrid == hybrid)
    ]


class KeyCache:
    """Two independent stored keys per algorithm, generated on first use."""

    def __init__(self) -> None:
        self._stored: dict[tuple[str, int], bytes] = {}
        self._loaded: dict[tuple[str, int], object] = {}

    def stored(self, name: str, which: int = 0) -> bytes:
        if (name, which) not in self._stored:
            self._stored[name, which] = suite_for(name).generate()
        return self._stored[name, which]

    def private(self, name: str, which: int = 0):
        """The loaded key, cached: loading validates RSA-4096 keys, which is slow."""
        if (name, which) not in self._loaded:
            self._loaded[name, which] = suite_for(name).load_private(self.stored(name, which))
        return self._loaded[name, which]


def vector_json(relative: str) -> dict:
    return json.loads((VECTORS / relative).read_text())


def rsp_records(path: str, limit: int | None = None) -> Iterator[dict]:
    """Records of a NIST-style ``key = value`` file from cryptography-vectors.

    A record ends at a blank line or where one of its keys comes again.
    ``[key = value]`` and ``[name]`` header lines accumulate into the
    ``_section`` dict of the records that follow;
    a bare ``FAIL`` line sets ``FAIL``. Only the first ``limit`` records are
    read, so multi-megabyte KAT files cost milliseconds.
    """
    section: dict[str, str] = {}
    record: dict = {}
    count = 0
    with cryptography_vectors.open_vector_file(path, "r") as f:
        for line in itertools.chain(f, [""]):
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                key, _, value = line[1:-1].partition("=")
                section[key.strip() if value else "_name"] = value.strip() or key.strip()
            elif line.startswith("#"):
                continue
            elif line == "FAIL":
                record["FAIL"] = True
            elif "=" in line and line.partition("=")[0].strip() not in record:
                key, _, value = line.partition("=")
                record[key.strip()] = value.strip()
            elif record:  # a blank line, or a key seen again: the next record starts
                yield {"_section": dict(section), **record}
                record, count = {}, count + 1
                if limit is not None and count >= limit:
                    return
                if "=" in line:
                    key, _, value = line.partition("=")
                    record[key.strip()] = value.strip()


# --- a minimal DER reader, enough to take SubjectPublicKeyInfo apart ------------


def _read_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    return tag, data[pos : pos + length], pos + length


def decode_oid(body: bytes) -> str:
    arcs, value = [], 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def parse_spki(der: bytes) -> tuple[str, bytes | None, bytes]:
    """(algorithm OID, parameters DER or None, subjectPublicKey bytes)."""
    tag, spki, end = _read_tlv(der, 0)
    assert tag == 0x30 and end == len(der)
    tag, algorithm, pos = _read_tlv(spki, 0)
    assert tag == 0x30
    tag, oid, apos = _read_tlv(algorithm, 0)
    assert tag == 0x06
    params = algorithm[apos:] or None
    tag, bits, pos = _read_tlv(spki, pos)
    assert tag == 0x03 and bits[0] == 0 and pos == len(spki)
    return decode_oid(oid), params, bits[1:]


def der_integers(der: bytes) -> list[int]:
    """The INTEGERs of a DER SEQUENCE, e.g. an ECDSA (r, s) signature."""
    tag, body, end = _read_tlv(der, 0)
    assert tag == 0x30 and end == len(der)
    out, pos = [], 0
    while pos < len(body):
        tag, value, pos = _read_tlv(body, pos)
        assert tag == 0x02
        out.append(int.from_bytes(value, "big"))
    return out
