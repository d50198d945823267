"""Fuzz the labelling API from its own OpenAPI schema (schemathesis): no input gives a 5xx.

Each operation is called twice per example: as a logged-in admin with a valid CSRF token (so the handlers, not
only the auth layer, see the generated bodies) and with no credentials (which must be a 4xx, never a 5xx).
Schemathesis sends standard JSON only, so a second test (hypothesis) sends what Python's json parser accepts and
the standard does not: NaN, Infinity, -Infinity, numbers that overflow to infinity (1e999) and unpaired surrogate
escapes, alone or inside otherwise valid bodies of every POST route; each must be a 422, never a 5xx.
RLHFKIT_FUZZ_EXAMPLES sets the examples per operation (default 25, bounded for CI).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rlhfkit.app import auth  # noqa: E402
from rlhfkit.app.server import ServerConfig, create_app  # noqa: E402

EXAMPLES = int(os.environ.get("RLHFKIT_FUZZ_EXAMPLES", "25"))


def _make_env():
    """Built at import: schemathesis needs the schema when pytest collects (its lazy from_fixture does not work
    with this pytest). The database lives in a temporary directory removed at exit."""
    d = Path(tempfile.mkdtemp(prefix="rlhfkit-fuzz-"))
    atexit.register(shutil.rmtree, d, True)
    items = d / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"f{i}", "prompt": "<script>x</script>", "responses": ["a", "b"]}) + "\n"
                             for i in range(50)))
    app = create_app(ServerConfig(db=str(d / "f.sqlite"), items=str(items), retrain_every=5, live_model=False,
                                  login_max_failures=10_000, login_max_failures_per_address=10_000,
                                  export_dir=str(d / "exports")))
    token = auth.new_token()
    app.state.store.add_user("root", "admin", auth.hash_token(token))
    client = TestClient(app)
    r = client.post("/api/login", json={"name": "root", "token": token})
    headers = {"X-CSRF-Token": r.json()["csrf"], "Cookie": f"rlhfkit_session={r.cookies['rlhfkit_session']}"}
    return app, headers, client


APP, HEADERS, CLIENT = _make_env()
NOBODY = TestClient(APP)
schema = schemathesis.openapi.from_asgi("/api/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_no_server_errors(case):
    headers = HEADERS
    if case.path == "/api/logout":
        return  # would end the fuzzing session itself; covered by test_label_api
    for h in (headers, {}):
        response = case.call(headers={**(case.headers or {}), **h})
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
        if not h and case.path not in ("/api/health", "/api/login"):
            assert 400 <= response.status_code < 500, (case.method, case.path, response.status_code)


# -- JSON that Python accepts and the standard does not ----------------------------------------------------------
class Raw(str):
    """A literal spliced into the body text as is (json.dumps cannot write most of these)."""


NON_STANDARD = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400", '"\\ud800"',
                                '"a\\udfff"', '{"k\\udbff": 1}']).map(Raw)
# A valid body per POST route, so the bad value also reaches fields past the first one the validator rejects.
VALID = {
    "/api/login": {"name": "root", "token": "x"},
    "/api/next": {}, "/api/undo": {"label_id": 1},
    "/api/labels": {"item_id": 1, "choice": "rank", "ranking": [0, 1], "rationale": "r", "idempotency_key": "abcdefgh"},
    "/api/admin/export": {"filename": "x.jsonl", "ties": "keep", "rank_pairs": "all"},
    "/api/admin/users": {"name": "fuzzed", "role": "annotator"},
    "/api/admin/items": {"rows": [{"id": "z", "prompt": [{"role": "user", "content": "p"}], "responses": ["a", "b"],
                                   "kind": "k"}]},
}
PLAIN = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()


def to_json(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, list):
        return "[" + ",".join(to_json(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k) + ":" + to_json(x) for k, x in v.items()) + "}"
    return json.dumps(v)


@st.composite
def with_one_bad_value(draw, value):
    """`value` with one leaf (or the whole of it, or an added key) replaced by a non-standard literal."""
    bad = draw(NON_STANDARD)
    if isinstance(value, dict) and value and draw(st.booleans()):
        k = draw(st.sampled_from(sorted(value)))
        return {**value, k: draw(with_one_bad_value(value[k]))}
    if isinstance(value, list) and value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        return value[:i] + [draw(with_one_bad_value(value[i]))] + value[i + 1:]
    if isinstance(value, dict) and draw(st.booleans()):
        return {**value, draw(st.text(max_size=5)): bad}
    return bad


NOISE = st.recursive(PLAIN, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                     max_leaves=6)


@given(path=st.sampled_from(sorted(VALID)), data=st.data())
@settings(max_examples=4 * EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_non_standard_json_is_422(path, data):
    base = data.draw(st.sampled_from([VALID[path], data.draw(NOISE)]))
    body = to_json(data.draw(with_one_bad_value(base))).encode()
    for client, headers in ((CLIENT, HEADERS), (NOBODY, {})):
        r = client.post(path, content=body, headers={**headers, "Content-Type": "application/json"})
        if path == "/api/next":  # takes no body: what is sent is never parsed
            assert r.status_code == (200 if headers else 401), (r.status_code, r.text[:300])
        else:  # the body is parsed before the session is checked: a 422 either way
            assert r.status_code == 422 and "standard JSON" in r.text, (path, body[:200], r.status_code,
                                                                             r.text[:300])
