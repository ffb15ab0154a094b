"""The data-plane benchmark's reading of wrk's report and its Lua scripts (bench/wrk.py):
pure functions, checked without wrk."""

from __future__ import annotations

import json

import pytest
from bench.wrk import lua_script, parse

REPORT = """Running 10s test @ http://127.0.0.1:8200/v1/transit/sign/ed
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.93ms    8.12ms 112.07ms   93.47%
  Latency Distribution
     50%  635.91us
     75%    4.12ms
     90%    9.80ms
     99%    1.02s
  52011 requests in 10.00s, 21.37MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   5200.10
Transfer/sec:      2.14MB
"""


def test_parse_reads_rate_percentiles_and_every_kind_of_error() -> None:
    figures = parse(REPORT)
    assert figures.rps == 5200.10 and figures.requests == 52011
    assert figures.p50 == pytest.approx(0.63591) and figures.p99 == pytest.approx(1020.0)
    assert figures.errors == 7


def test_parse_refuses_a_report_without_figures() -> None:
    with pytest.raises(ValueError, match="no figures"):
        parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_the_lua_script_posts_the_body_as_json_with_the_headers() -> None:
    script = lua_script({"Authorization": 'Bearer a"b'}, {"input": "QUJD"})
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Authorization"] = "Bearer a\\"b"' in script
    body = script.split("wrk.body = ", 1)[1].strip()
    assert json.loads(json.loads(body)) == {"input": "QUJD"}
