"""The OpenAPI document against the live server: schemathesis fuzzes every operation.

It finds no 5xx and no response (status, content type, headers, body) outside the
document, with every check on. The commented configuration below allows only what
docs/spec.md explains: state-dependent 402 and 429 (billing, concurrency and rates are
the account's state), a ``timeout_seconds`` over the account's own plan (422), and a
terminated session that stays readable after ``DELETE`` (retention, SPEC §1).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from daemon.api import openapi_document
from tests.servers import Daemon

Start = Callable[..., Daemon]

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))

CONFIG = """
# One worker: schemathesis's coverage phase is not reliably thread-safe.
workers = 1

[generation]
max-examples = 50

# Every check runs. The statuses below are what docs/spec.md says a request may meet
# however well-formed it is, because the answer depends on state, not on the request.

# Schema-valid requests: besides the defaults (401, 403, 404, 409, 429), 402 is the
# account's billing status (SPEC §2, checked before the fields), 429 its concurrent
# sessions or rates (SPEC §2, §6).
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "402", "403", "404", "409", "429"]

# Schema-violating requests: refused, and 402/429 may come first (billing and
# concurrency are checked before the fields, SPEC §2).
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "402", "403", "404", "405", "409", "413", "415", "422", "429"]

# A terminated session stays readable for terminated_retention_seconds (SPEC §1): a
# GET after DELETE answers 200 by design.
[checks.use_after_free]
enabled = false

# timeout_seconds is capped by the account's own plan (SPEC §2: create checks it with the
# fields; SPEC "Changes to 0.2's lines": a PATCH may not go below the time already run),
# which the document gives only as the longest plan's maximum: a schema-valid value
# can be 422 for this account.
[[operations]]
include-operation-id = ["createSession", "updateSession"]
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "401", "402", "403", "404", "409", "422", "429",
]

# A top-up is refused when it would take the account's balance over its maximum (SPEC §7
# keeps balances exact; docs/api.md): which amounts fit depends on the balance.
[[operations]]
include-operation-id = ["topUpCredits"]
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "401", "402", "403", "404", "409", "422", "429",
]
"""


async def test_fuzzing_the_live_api_finds_nothing_outside_the_document(
    redis: Any, daemons: Start, tmp_path: Path
) -> None:
    # A test delivery to a fuzzed URL answers well within schemathesis's request timeout.
    d = daemons(webhook_timeout_seconds=2)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    proc = await asyncio.create_subprocess_exec(
        SCHEMATHESIS, "--config-file", str(config), "run", f"{d.api}/v1/openapi.json",
        "--request-timeout", "10",
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=110)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text
    operations = sum(
        1
        for item in json.loads(openapi_document())["paths"].values()
        for method in item
        if method != "parameters"
    )
    assert operations == 25 and f"{operations - 1} selected / {operations - 1} total" in text
    assert "Internal Server Error" not in d.log()
    assert "request_failed" not in d.log()


PLANS = """\
[plans.basic]
max_concurrent = 2
max_duration_seconds = 600
requests_per_minute = 3
creates_per_minute = 1

[plans.team]
max_duration_seconds = 7200
"""


async def test_served_document_names_the_loaded_plans_and_the_rate_limit_answers(
    daemons: Start, tmp_path: Path
) -> None:
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS)
    d = daemons(plans_file=plans, default_plan="basic")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{d.api}/v1/openapi.json") as resp:
            doc = await resp.json()
        schemas = doc["components"]["schemas"]
        assert schemas["AccountUpdate"]["properties"]["plan"]["enum"] == ["basic", "team"]
        for name in ("SessionCreate", "SessionUpdate"):
            assert schemas[name]["properties"]["timeout_seconds"]["maximum"] == 7200
        headers = doc["components"]["headers"]
        operation = doc["paths"]["/v1/accounts/{account_id}"]["get"]["responses"]
        assert operation["429"] == {"$ref": "#/components/responses/RateLimited"}
        limited = doc["components"]["responses"]["RateLimited"]
        codes = limited["content"]["application/json"]["schema"]["allOf"][1]
        answers = []
        for _ in range(4):
            async with http.get(f"{d.api}/v1/accounts/acme") as resp:
                answers.append((resp.status, dict(resp.headers), await resp.json()))
        assert [status for status, _, _ in answers] == [200, 200, 200, 429]
        for status, got, _ in answers:
            documented = operation["200"]["headers"] if status == 200 else limited["headers"]
            assert set(documented) == {"Retry-After", "RateLimit-Policy", "RateLimit"} - (
                {"Retry-After"} if status == 200 else set()
            )
            for name in documented:
                pattern = headers[name]["schema"]["pattern"]
                assert re.fullmatch(pattern, got[name]), (name, got[name], pattern)
        assert answers[-1][2]["error"] in codes["properties"]["error"]["enum"]
        # What the enum leaves out the API refuses.
        async with http.put(f"{d.api}/v1/accounts/zed", json={"plan": "free"}) as resp:
            assert resp.status == 422
