"""Fuzz the labelling API from its own OpenAPI schema (schemathesis): no input gives a 5xx.

Each operation is called twice per example: as a logged-in admin with a valid CSRF token (so the handlers, not
only the auth layer, see the generated bodies) and with no credentials (which must be a 4xx, never a 5xx).
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
from hypothesis import HealthCheck, settings  # noqa: E402

from rlhfkit.label import auth  # noqa: E402
from rlhfkit.label.server import ServerConfig, create_app  # noqa: E402

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
                                  login_max_failures=10_000, export_dir=str(d / "exports")))
    token = auth.new_token()
    app.state.store.add_user("root", "admin", auth.hash_token(token))
    client = TestClient(app)
    r = client.post("/api/login", json={"name": "root", "token": token})
    headers = {"X-CSRF-Token": r.json()["csrf"], "Cookie": f"rlhfkit_session={r.cookies['rlhfkit_session']}"}
    return app, headers


APP, HEADERS = _make_env()
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
