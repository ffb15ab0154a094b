"""Issue 14's attacks on a running data plane, each reproduced and refused."""

from __future__ import annotations

import io
import json
import logging

import aiohttp

from qkms import logs
from tests.server.common import TOKENS


async def raw_post(url: str, token: str | None = "checkout", body: bytes = b"{}",
                   headers: dict | None = None) -> tuple[int, dict]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {TOKENS.get(token, token)}"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=sent) as rsp:
            text = await rsp.text()
            try:
                return rsp.status, json.loads(text)
            except ValueError:
                return rsp.status, {"text": text}


async def test_a_newline_in_the_path_cannot_forge_a_log_line(plane):
    """Item 8: %0A in a path once wrote a second, forged line into the server log."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.LineFormatter("qkms: %(levelname)s: %(message)s"))
    logger = logging.getLogger("key-management:server")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        forged = "x%0Aqkms:%20INFO:%20sign%20payments-forged:%20ok%0D"
        status, _ = await raw_post(f"{plane.url}/v1/keys/payments/{forged}:sign", token=None,
                                   headers={"X-Request-Id": "abc\u2028def"})
    finally:
        logger.removeHandler(handler)
    assert status == 401
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\\n" in lines[0]
    assert not any(line.startswith("qkms: INFO: sign payments-forged") for line in lines)
