"""The README's Ethereum snippet, run as a user runs it: pasted into the quick start's
``main()`` (``kms = KeyManagementService()``, LOCAL_DEV by default) in a fresh Python
process, over real unsigned transactions.  eth-account then recovers the sender from the
raw transaction assembled with the README's ``v`` rule, and ``qkms keys public --format
ethereum`` names the same address.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import rlp
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from eth_hash.auto import keccak
from eth_keys import keys as eth_keys

from qkms.crypto import ecdsa

ROOT = Path(__file__).resolve().parents[2]
RECIPIENT = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # EIP-55's own example
TO = bytes.fromhex(RECIPIENT[2:])
CHAIN_ID = 11155111  # Sepolia: a chain id past one byte, so EIP-155's v is a large number


def readme_snippet() -> str:
    """The first Python block of the section "Ethereum, Bitcoin and JOSE signatures"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Ethereum, Bitcoin and JOSE signatures"):]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    return block.group(1)


def eip1559() -> tuple[dict, bytes]:
    tx = {"type": 2, "chainId": CHAIN_ID, "nonce": 7, "maxPriorityFeePerGas": 10**9,
          "maxFeePerGas": 3 * 10**10, "gas": 21000, "to": RECIPIENT, "value": 10**15,
          "data": b"", "accessList": []}
    unsigned = bytes([2]) + rlp.encode([CHAIN_ID, 7, 10**9, 3 * 10**10, 21000, TO, 10**15,
                                        b"", []])
    assert keccak(unsigned) == TypedTransaction.from_dict(tx).hash()  # eth-account agrees
    return tx, unsigned


LEGACY = [9, 2 * 10**10, 21000, TO, 10**15, b""]  # nonce, gasPrice, gas, to, value, data


def run_snippet(tmp_path: Path, unsigned: list[bytes]) -> tuple[list[dict], dict]:
    """Each unsigned transaction through the snippet in ``main()``; r, s, v and the sender."""
    body = textwrap.indent(readme_snippet(), "        ")
    script = tmp_path / "sign.py"
    script.write_text(
        "import asyncio, json, sys\n"
        "from qkms import KeyManagementService\n\n"
        "async def main():\n"
        "    kms = KeyManagementService()\n"
        "    out = []\n"
        "    for unsigned_tx in map(bytes.fromhex, sys.argv[1:]):\n"
        f"{body}"
        "        out.append({'r': r.hex(), 's': s.hex(), 'v': v, 'name': wallet.name,\n"
        "                    'provider': str(wallet.provider),\n"
        "                    'sender': address(wallet.public_key)})\n"
        "    print(json.dumps(out))\n\n"
        "asyncio.run(main())\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QKMS_", "KMS_", "AWS_", "VAULT_", "AZURE_", "HSM_"))}
    env.update(QKMS_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT / "operator"))
    proc = subprocess.run([sys.executable, str(script), *(u.hex() for u in unsigned)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1]), env


def test_the_readme_snippet_signs_transactions_eth_account_accepts(tmp_path) -> None:
    snippet = readme_snippet()
    assert len(snippet.strip().splitlines()) <= 5, "the README promises five lines"
    tx, typed = eip1559()
    eip155 = rlp.encode([*LEGACY, CHAIN_ID, 0, 0])
    homestead = rlp.encode(LEGACY)  # before EIP-155: no chain id in the signed payload
    signed, env = run_snippet(tmp_path, [typed, eip155, homestead])

    vrs = []
    for sig, unsigned in zip(signed, [typed, eip155, homestead]):
        assert sig["provider"] == "LOCAL_DEV"
        r, s, v = int(sig["r"], 16), int(sig["s"], 16), sig["v"]
        assert v in (0, 1) and s <= ecdsa.SECP256K1.half_n  # EIP-2: low-S only
        recovered = eth_keys.Signature(vrs=(v, r, s)).recover_public_key_from_msg_hash(
            keccak(unsigned))
        assert recovered.to_checksum_address() == sig["sender"]
        cli = subprocess.run([sys.executable, "-m", "qkms", "keys", "public", sig["name"],
                              "--format", "ethereum"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.strip() == sig["sender"]
        vrs.append((v, r, s))

    # The raw transactions, v as the README says, recovered by eth-account.
    (v, r, s), (v2, r2, s2), (v3, r3, s3) = vrs
    assembled = [
        TypedTransaction.from_dict({**tx, "v": v, "r": r, "s": s}).encode(),
        rlp.encode([*LEGACY, CHAIN_ID * 2 + 35 + v2, r2, s2]),
        rlp.encode([*LEGACY, 27 + v3, r3, s3]),
    ]
    for sig, transaction in zip(signed, assembled):
        assert Account.recover_transaction(transaction) == sig["sender"]
    # EIP-155 binds the chain id: the same signature with another chain's v names some
    # other sender.
    other = rlp.encode([*LEGACY, 1 * 2 + 35 + v2, r2, s2])
    assert Account.recover_transaction(other) != signed[1]["sender"]
