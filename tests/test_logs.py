"""DEBUG=key-management:* turns on qkms debug output, and nothing else's."""

from __future__ import annotations

import json
import logging

from qkms import logs


def test_debug_switch_and_json_lines(capsys) -> None:
    logs.configure(json_lines=True, debug="key-management:*")
    logging.getLogger("key-management:new-part").debug("visible")
    logging.getLogger("someone-else").debug("hidden")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("key-management:new-part", "visible")]


def test_no_debug_by_default(capsys) -> None:
    logs.configure(debug="")
    logging.getLogger("key-management:service").debug("hidden")
    logging.getLogger("key-management:service").warning("shown")
    assert capsys.readouterr().err.strip() == "qkms: WARNING: shown"
