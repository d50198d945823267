"""API tests for the labelling app: every route, unauthenticated (401), wrong role / missing CSRF (403), and the
storage guarantees (idempotency, overlap, undo, export undoing the left/right randomisation)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from rlhfkit.app import auth  # noqa: E402
from rlhfkit.app.db import open_store  # noqa: E402
from rlhfkit.app.items import parse_rows  # noqa: E402
from rlhfkit.app.server import ServerConfig, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_items(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PAIRS = [{"id": f"p{i}", "prompt": f"Question {i}?", "responses": [f"short {i}", f"a much longer answer {i}"]}
         for i in range(6)]


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch):
    # The cost is stored in each hash, so a cheaper one in tests only speeds up hashing + login here.
    monkeypatch.setattr(auth, "SCRYPT_N", 2**10)


@pytest.fixture()
def env(tmp_path):
    """An app with 6 pair items, 1 ranked item, an admin and two annotators; returns helpers."""
    items = write_items(tmp_path / "items.jsonl",
                        PAIRS + [{"id": "r0", "prompt": "Rank these", "responses": ["a", "bb", "ccc"]}])
    cfg = ServerConfig(db=str(tmp_path / "l.sqlite"), items=str(items), overlap=2, retrain_every=1,
                       login_max_failures=3, features="bow")  # minilm is tested in test_label_model.py
    app = create_app(cfg)
    store = app.state.store
    tokens = {}
    for name, role in [("boss", "admin"), ("ann", "annotator"), ("bob", "annotator")]:
        tokens[name] = auth.new_token()
        store.add_user(name, role, auth.hash_token(tokens[name]))

    def client(name: str | None = None) -> TestClient:
        c = TestClient(app)
        if name:
            r = c.post("/api/login", json={"name": name, "token": tokens[name]})
            assert r.status_code == 200, r.text
            c.headers["X-CSRF-Token"] = r.json()["csrf"]
        return c

    with TestClient(app):  # runs the lifespan (live-model thread)
        yield type("Env", (), {"app": app, "store": store, "tokens": tokens, "client": staticmethod(client),
                               "cfg": cfg, "tmp": tmp_path})


def key() -> str:
    return uuid.uuid4().hex


def label(c: TestClient, choice: str = "left", **kw):
    nxt = c.post("/api/next").json()
    assert not nxt["done"]
    item = nxt["item"]
    body = {"item_id": item["item_id"], "choice": choice, "idempotency_key": key(), **kw}
    if item["mode"] == "rank" and choice != "skip":
        body.update(choice="rank", ranking=list(range(len(item["responses"]))))
    r = c.post("/api/labels", json=body)
    assert r.status_code == 200, r.text
    return item, r.json()


# -- authentication / authorisation matrix ----------------------------------------------------------------------
ROUTES = [
    ("POST", "/api/logout", {}), ("GET", "/api/me", None), ("POST", "/api/next", {}),
    ("POST", "/api/labels", {"item_id": 1, "choice": "left", "idempotency_key": "abcdefgh"}),
    ("POST", "/api/undo", {}), ("GET", "/api/progress", None), ("GET", "/api/model", None),
    ("GET", "/api/admin/stats", None), ("GET", "/api/admin/export", None),
    ("POST", "/api/admin/export", {"filename": "x.jsonl"}), ("POST", "/api/admin/users", {"name": "zed"}),
    ("POST", "/api/admin/items", {"rows": []}),
]
ADMIN_ROUTES = [r for r in ROUTES if r[1].startswith("/api/admin/")]


def call(c, method, path, body):
    return c.get(path) if method == "GET" else c.post(path, json=body)


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_unauthenticated_is_401(env, method, path, body):
    assert call(env.client(), method, path, body).status_code == 401


@pytest.mark.parametrize("method,path,body", ADMIN_ROUTES)
def test_annotator_on_admin_route_is_403(env, method, path, body):
    assert call(env.client("ann"), method, path, body).status_code == 403


@pytest.mark.parametrize("method,path,body", [r for r in ROUTES if r[0] == "POST"])
def test_post_without_csrf_is_403(env, method, path, body):
    c = env.client("boss")
    del c.headers["X-CSRF-Token"]
    assert c.post(path, json=body).status_code == 403
    c.headers["X-CSRF-Token"] = "0" * 64
    assert c.post(path, json=body).status_code == 403


def test_cross_origin_post_is_refused(env):
    c = env.client("ann")
    assert c.post("/api/next", headers={"Origin": "http://evil.example"}).status_code == 403
    assert c.post("/api/next", headers={"Origin": "http://testserver"}).status_code == 200
    r = env.client().post("/api/login", json={"name": "ann", "token": env.tokens["ann"]},
                          headers={"Origin": "http://evil.example"})
    assert r.status_code == 403


def test_public_routes_and_security_headers(env):
    c = env.client()
    assert c.get("/api/health").json() == {"ok": True}
    page = c.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text.replace('<script src="/static/app.js" defer></script>', "")
    for f in ("app.js", "app.css"):
        assert c.get(f"/static/{f}").status_code == 200
    assert c.get("/static/../db.py").status_code == 404
    assert c.get("/api/openapi.json").status_code == 200
    assert c.get("/docs").status_code == 404  # swagger UI loads from a CDN with inline scripts: disabled
    assert c.get("/api/health").headers["cache-control"] == "no-store"


def test_static_js_never_uses_html_sinks():
    js = (ROOT / "rlhfkit/app/static/app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js


# -- login ------------------------------------------------------------------------------------------------------
def test_login_logout_me(env):
    c = env.client()
    assert c.post("/api/login", json={"name": "ann", "token": "wrong"}).status_code == 401
    assert c.post("/api/login", json={"name": "nobody", "token": "x"}).status_code == 401
    r = c.post("/api/login", json={"name": "ann", "token": env.tokens["ann"]})
    assert r.status_code == 200 and r.json()["role"] == "annotator"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    c.headers["X-CSRF-Token"] = r.json()["csrf"]
    assert c.get("/api/me").json()["name"] == "ann"
    assert c.post("/api/logout").status_code == 200
    assert c.get("/api/me").status_code == 401


def test_login_rate_limit(env):
    c = env.client()
    for _ in range(3):
        assert c.post("/api/login", json={"name": "bob", "token": "guess"}).status_code == 401
    r = c.post("/api/login", json={"name": "bob", "token": env.tokens["bob"]})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_wrong_tokens_from_elsewhere_do_not_lock_out_the_user(env):
    """Failures count per (name, address): a stranger's wrong tokens for bob slow the stranger, not bob."""
    stranger = TestClient(env.app, client=("203.0.113.9", 40000))
    codes = [stranger.post("/api/login", json={"name": "bob", "token": "guess"}).status_code for _ in range(12)]
    assert codes[:3] == [401] * 3 and 429 in codes
    bob = TestClient(env.app, client=("198.51.100.20", 40000))
    assert bob.post("/api/login", json={"name": "bob", "token": env.tokens["bob"]}).status_code == 200
    # Users behind the stranger's address are not locked out either.
    ann_there = TestClient(env.app, client=("203.0.113.9", 40001))
    assert ann_there.post("/api/login", json={"name": "ann", "token": env.tokens["ann"]}).status_code == 200


def limited_app(tmp_path, **cfg):
    app = create_app(ServerConfig(db=str(tmp_path / "rl.sqlite"), live_model=False, **cfg))
    token = auth.new_token()
    app.state.store.add_user("bob", "annotator", auth.hash_token(token))
    return app, token


def test_per_address_limit_counts_every_name(tmp_path):
    """One address rotating names: after login_max_failures_per_address failures in the window, 429 for any name
    from that address (scrypt is not run for it); other addresses are unaffected."""
    app, token = limited_app(tmp_path, login_max_failures=3, login_max_failures_per_address=5)
    here = TestClient(app, client=("203.0.113.9", 40000))
    codes = [here.post("/api/login", json={"name": f"nobody{i}", "token": "x"}).status_code for i in range(6)]
    assert codes == [401] * 5 + [429]
    r = here.post("/api/login", json={"name": "bob", "token": token})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert TestClient(app, client=("198.51.100.20", 1)).post("/api/login", json={"name": "bob", "token": token}).status_code == 200


@pytest.mark.parametrize("trusted", [(), ("127.0.0.1",)])
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path, trusted):
    """Rotating X-Forwarded-For from 127.0.0.1 bypasses nothing unless 127.0.0.1 is a named proxy; from a named
    proxy, the nearest untrusted hop counts (a client-written entry further left does not)."""
    app, token = limited_app(tmp_path, login_max_failures=3, login_max_failures_per_address=5, trusted_proxies=trusted)
    local = TestClient(app, client=("127.0.0.1", 40000))
    codes = [local.post("/api/login", json={"name": f"n{i}", "token": "x"},
                        headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(8)]
    assert (429 in codes) == (not trusted), codes
    if trusted:  # the proxy appended the real peer (192.0.2.1) after whatever the client sent
        codes = [local.post("/api/login", json={"name": f"m{i}", "token": "x"},
                            headers={"X-Forwarded-For": f"10.1.0.{i}, 192.0.2.1"}).status_code for i in range(6)]
        assert codes == [401] * 5 + [429]


def test_client_address():
    trusted = auth.parse_networks(["127.0.0.1", "10.0.0.0/8"])
    assert auth.client_address("203.0.113.9", ["1.2.3.4"], trusted) == "203.0.113.9"  # not a proxy: header ignored
    assert auth.client_address("127.0.0.1", [], trusted) == "127.0.0.1"
    assert auth.client_address("127.0.0.1", ["6.6.6.6, 198.51.100.7"], trusted) == "198.51.100.7"
    assert auth.client_address("127.0.0.1", ["6.6.6.6, 198.51.100.7", "10.2.3.4"], trusted) == "198.51.100.7"
    assert auth.client_address("::ffff:127.0.0.1", ["198.51.100.7"], trusted) == "198.51.100.7"  # dual-stack peer
    assert auth.client_address("127.0.0.1", ["10.1.1.1"], trusted) == "10.1.1.1"  # proxies all the way: the first


def test_trusted_proxies_must_be_addresses(tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli.label import app

    with pytest.raises(ValueError, match="trusted proxies"):
        create_app(ServerConfig(db=str(tmp_path / "x.sqlite"), live_model=False, trusted_proxies=("proxy.local",)))
    r = CliRunner().invoke(app, ["serve", "--db", str(tmp_path / "x.sqlite"), "--trusted-proxies", "10.0.0.0/8,nope"])
    assert r.exit_code == 2 and "'nope' is not an IP address" in r.output


def test_login_limiter_backoff_and_reset():
    """Per (name, address): after `free` failures a wait of 1 s, doubling with each further failure (at most
    max_wait_s); a success clears it; after the wait plus a quiet window the count starts over."""
    now = [1000.0]
    lim = auth.LoginLimiter(free_failures=2, max_wait_s=5, per_address=100, window_s=60, clock=lambda: now[0])
    waits = []
    for _ in range(6):
        waits.append(lim.wait("bob", "a"))
        now[0] += waits[-1]  # the client waits as told, then fails again
        lim.fail("bob", "a")
    assert waits == [0, 0, 1, 2, 4, 5]
    assert lim.wait("bob", "a") == 5 and lim.wait("bob", "b") == 0 and lim.wait("ann", "a") == 0  # capped
    lim.succeed("bob", "a")
    assert lim.wait("bob", "a") == 0
    for _ in range(2):
        lim.fail("ann", "a")
    assert lim.wait("ann", "a") == 1
    now[0] += 1 + 60 + 0.1  # the wait, then a quiet window
    lim.fail("ann", "a")
    assert lim.wait("ann", "a") == 0  # one failure in a fresh count


def test_secret_file_is_0600_and_tokens_hashed(env):
    secret = Path(env.cfg.db + ".secret")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32
    raw = Path(env.cfg.db).read_bytes() + b"".join(p.read_bytes() for p in env.tmp.glob("l.sqlite-wal"))
    for t in env.tokens.values():
        assert t.encode() not in raw
    os.chmod(secret, 0o644)
    with pytest.raises(PermissionError):
        auth.load_or_create_secret(secret)


# -- labelling --------------------------------------------------------------------------------------------------
def test_next_label_idempotent_and_model(env):
    c = env.client("ann")
    item = c.post("/api/next").json()["item"]
    assert c.post("/api/next").json()["item"]["item_id"] == item["item_id"]  # same open assignment
    body = {"item_id": item["item_id"], "choice": "right", "idempotency_key": key(), "rationale": "r"}
    first = c.post("/api/labels", json=body).json()
    again = c.post("/api/labels", json=body).json()
    assert not first["duplicate"] and again["duplicate"] and again["label_id"] == first["label_id"]
    assert c.post("/api/labels", json={**body, "choice": "left"}).status_code == 409  # key reuse, other payload
    assert c.post("/api/labels", json={**body, "idempotency_key": key()}).status_code == 409  # labelled already
    assert env.store.count_live_labels() == 1
    # retrain_every=1: the background thread retrains after this label.
    import time

    deadline = time.monotonic() + 10
    while (model := c.get("/api/model").json()).get("trained_on_labels") != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert model["comparisons"] == 1 and model["retrain_every"] == 1 and model["version"] >= 1
    assert model["train"]["n"] + model["heldout"]["n"] == 1  # one left/right label = one pair


def test_label_validation(env):
    c = env.client("ann")
    item = c.post("/api/next").json()["item"]
    base = {"item_id": item["item_id"], "choice": "left", "idempotency_key": key()}
    assert c.post("/api/labels", json={**base, "choice": "best"}).status_code == 422
    assert c.post("/api/labels", json={**base, "idempotency_key": "short"}).status_code == 422
    assert c.post("/api/labels", json={**base, "rationale": "x" * 5000}).status_code == 422
    assert c.post("/api/labels", json={**base, "item_id": 999}).status_code == 409  # not assigned
    assert c.post("/api/labels", content=b"item_id=1", headers={"Content-Type": "text/plain"}).status_code == 422


def test_overlap_distinct_annotators_never_twice(env):
    """overlap=2: each item goes to 2 distinct annotators; a third never gets a full item; nobody gets one twice."""
    seen = {}
    for name in ("ann", "bob"):
        c = env.client(name)
        seen[name] = []
        while True:
            nxt = c.post("/api/next").json()
            if nxt["done"]:
                break
            seen[name].append(nxt["item"]["item_id"])
            label(c)
    assert len(seen["ann"]) == len(set(seen["ann"])) == 7 and sorted(seen["ann"]) == sorted(seen["bob"])
    assert env.client("boss").post("/api/next").json()["done"]  # every item has its 2 annotators
    prog = env.client("boss").get("/api/admin/stats").json()["progress"]
    assert prog["items_complete"] == 7 and prog["labels"] == 14


def test_skip_frees_the_slot(env):
    """overlap=2: ann skips X, so X still needs 2 labels; bob and boss give them, and X never returns to ann."""
    ann, bob, boss = env.client("ann"), env.client("bob"), env.client("boss")
    skipped, _ = label(ann, "skip")
    for c in (bob, boss):
        while not (n := c.post("/api/next").json())["done"]:
            label(c)
    labelled_x = [lab["annotator"] for lab in env.store.live_labels() if lab["item_id"] == skipped["item_id"]]
    assert sorted(labelled_x) == ["bob", "boss"]
    assert ann.post("/api/next").json()["done"]  # every item now has its 2 annotators; ann's skip stays a skip


def test_undo_returns_the_item_and_is_idempotent(env):
    c = env.client("ann")
    item1, lab1 = label(c, "left")
    item2 = c.post("/api/next").json()["item"]  # now on screen
    r = c.post("/api/undo", json={"label_id": lab1["label_id"]}).json()
    assert r == {"undone": lab1["label_id"], "item_id": item1["item_id"], "rationale": ""}
    assert c.post("/api/undo", json={"label_id": lab1["label_id"]}).json()["undone"] == lab1["label_id"]  # retry
    assert c.post("/api/next").json()["item"]["item_id"] == item1["item_id"]  # the undone item comes back
    _, lab1b = label(c, "right")
    assert c.post("/api/next").json()["item"]["item_id"] == item2["item_id"]
    assert c.post("/api/undo", json={"label_id": 10**9}).status_code == 404
    _, lab2 = label(c, "tie")
    assert c.post("/api/undo", json={"label_id": lab1b["label_id"]}).status_code == 409  # not the latest
    assert env.client("bob").post("/api/undo", json={}).json()["undone"] is None
    assert env.store.count_live_labels() == 2


def test_ranking_mode(env):
    c = env.client("ann")
    while True:
        item = c.post("/api/next").json()["item"]
        if item["mode"] == "rank":
            break
        label(c)
    body = {"item_id": item["item_id"], "idempotency_key": key()}
    assert c.post("/api/labels", json={**body, "choice": "left"}).status_code == 422
    assert c.post("/api/labels", json={**body, "choice": "rank", "ranking": [0, 0, 1]}).status_code == 422
    r = c.post("/api/labels", json={**body, "choice": "rank", "ranking": [2, 0, 1]})
    assert r.status_code == 200
    assert c.post("/api/labels", json={**body, "choice": "rank", "ranking": [2, 0, 1]}).json()["duplicate"]
    assert c.post("/api/labels", json={**body, "choice": "rank", "ranking": [0, 2, 1]}).status_code == 409
    rows = [x for x in export(env) if x["item_id"] == "r0"]
    shown = [x["text"] for x in item["responses"]]
    best, mid, worst = shown[2], shown[0], shown[1]
    assert {(x["chosen"], x["rejected"]) for x in rows} == {(best, mid), (best, worst), (mid, worst)}


def export(env, **q):
    r = env.client("boss").get("/api/admin/export", params=q)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


def test_export_undoes_randomisation_and_ties(env):
    c = env.client("ann")
    given = {}
    for choice in ("left", "right", "tie", "both_bad", "left"):
        item, lab = label(c, choice, rationale=f"because {choice}")
        given[lab["label_id"]] = (item, choice)
    rows = export(env)
    assert len(rows) == 3
    for row in rows:
        item, choice = given[row["label_id"]]
        shown = [x["text"] for x in item["responses"]]
        want = shown if choice == "left" else shown[::-1]
        assert (row["chosen"], row["rejected"]) == tuple(want)
        assert row["annotator"] == "ann" and row["rationale"] == f"because {choice}" and row["outcome"] == "preference"
        assert row["item_id"].startswith("p") and row["prompt"].startswith("Question")
    kept = export(env, ties="keep")
    assert sorted(r["outcome"] for r in kept) == ["both_bad", "preference", "preference", "preference", "tie"]
    assert env.client("boss").get("/api/admin/export", params={"ties": "maybe"}).status_code == 422


def test_export_file_confined(env):
    boss = env.client("boss")
    label(env.client("ann"))
    r = boss.post("/api/admin/export", json={"filename": "prefs.jsonl"})
    assert r.status_code == 200 and r.json() == {"filename": "prefs.jsonl", "rows": 1}
    assert (env.tmp / "exports" / "prefs.jsonl").read_text().count("\n") == 1
    for bad in ("../prefs.jsonl", "/etc/passwd.jsonl", "a/b.jsonl", ".hidden.jsonl", "x.txt", "..jsonl", "x\x00.jsonl"):
        assert boss.post("/api/admin/export", json={"filename": bad}).status_code == 422, bad
    assert sorted(p.name for p in (env.tmp / "exports").iterdir()) == ["prefs.jsonl"]


def test_admin_users_and_items(env):
    boss = env.client("boss")
    r = boss.post("/api/admin/users", json={"name": "cat", "role": "annotator"})
    assert r.status_code == 200 and len(r.json()["token"]) >= 40
    assert boss.post("/api/admin/users", json={"name": "cat"}).status_code == 409
    assert boss.post("/api/admin/users", json={"name": "bad name!"}).status_code == 422
    cat = TestClient(env.app)
    assert cat.post("/api/login", json={"name": "cat", "token": r.json()["token"]}).status_code == 200
    r = boss.post("/api/admin/items", json={"rows": [
        {"prompt": "x", "chosen": "c", "rejected": "r"}, {"prompt": "x", "chosen": "c", "rejected": "r"},
        {"prompt": "y", "completion": "1"}, {"prompt": "y", "completion": "2"}, {"prompt": "z", "completion": "1"},
        {"nothing": 1}]})
    assert r.status_code == 200
    body = r.json()
    assert body["added"] == 2 and body["parsed"] == 3 and len(body["warnings"]) == 2  # duplicate row added once


BAD_ITEMS = [  # (row, the field its 422 must name)
    ({"id": "x1", "prompt": "p", "responses": [1, None, [{"role": "assistant", "content": "c"}]]}, "responses[0]"),
    ({"prompt": "p", "responses": ["a", None]}, "responses[1]"),
    ({"prompt": "p", "responses": ["a", []]}, "responses[1]"),
    ({"prompt": "p", "responses": ["a", {"role": "assistant", "content": "c"}]}, "responses[1]"),
    ({"prompt": 5, "responses": ["a", "b"]}, "prompt"),
    ({"prompt": [{"role": "user", "content": 3}], "responses": ["a", "b"]}, "prompt[0].content"),
    ({"prompt": [{"content": "hi"}], "responses": ["a", "b"]}, "prompt[0].role"),
    ({"prompt": "p", "chosen": "c", "rejected": [7]}, "rejected[0]"),
    ({"prompt": "p", "completion": {"text": "c"}}, "completion"),
    ({"id": {"a": 1}, "prompt": "p", "responses": ["a", "b"]}, "id"),
    ({"id": True, "prompt": "p", "responses": ["a", "b"]}, "id"),
    ({"kind": ["math"], "prompt": "p", "responses": ["a", "b"]}, "kind"),
]


@pytest.mark.parametrize("row,field", BAD_ITEMS, ids=[f for _, f in BAD_ITEMS])
def test_admin_items_refuses_bad_shapes(env, row, field):
    """A response or prompt that is not a string or a list of {role, content} string messages (shown as "1" or
    "None" before) is a 422 naming the row and the field; nothing from the request is added."""
    before = env.store.progress(1)["items"]
    r = env.client("boss").post("/api/admin/items", json={"rows": [{"prompt": "ok", "responses": ["a", "b"]}, row]})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("row 2") and f"{field}:" in detail, detail
    assert env.store.progress(1)["items"] == before


def test_item_size_is_capped_on_import(env):
    boss = env.client("boss")
    big = {"id": "big", "prompt": "p", "responses": ["a", "x" * 2**20]}
    r = boss.post("/api/admin/items", json={"rows": [big]})
    assert r.status_code == 413 and "row 1 (id 'big')" in r.json()["detail"] and "1 MiB" in r.json()["detail"]
    ok = {"id": "fits", "prompt": "p", "responses": ["a", "x" * (2**20 - 100)]}
    assert boss.post("/api/admin/items", json={"rows": [ok]}).json()["added"] == 1


def test_cli_import_bad_items_is_a_clear_error(tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli.label import app

    db = str(tmp_path / "c.sqlite")
    for name, line, want in [("shape", json.dumps({"prompt": "p", "responses": ["a", None]}), "row 1: responses[1]"),
                             ("nan", '{"prompt": "p", "responses": ["a", NaN]}', "not standard JSON"),
                             ("big", json.dumps({"prompt": "p", "responses": ["a", "x" * 2**21]}), "1 MiB")]:
        path = tmp_path / f"{name}.jsonl"
        path.write_text(line + "\n")
        r = CliRunner().invoke(app, ["import", str(path), "--db", db])
        assert r.exit_code == 2 and want in r.output and "Traceback" not in r.output, (name, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit)


def test_progress_and_stats(env):
    ann, bob = env.client("ann"), env.client("bob")
    for _ in range(4):
        label(ann, "left")
        label(bob, "left")
    p = ann.get("/api/progress").json()
    assert p["me"]["labelled"] == 4 and p["overall"]["labels"] == 8 and p["overall"]["needed"] == 14
    s = env.client("boss").get("/api/admin/stats").json()
    assert s["agreement"]["items_with_2plus"] == 4
    assert {(c["a"], c["b"]) for c in s["agreement"]["cohen"]} == {("ann", "bob")}
    assert s["gold"] is None  # no world items here


def test_body_size_limit(tmp_path):
    app = create_app(ServerConfig(db=str(tmp_path / "l.sqlite"), max_body_bytes=1000, live_model=False))
    c = TestClient(app)
    assert c.post("/api/login", content=b"{" + b" " * 2000 + b"}",
                  headers={"Content-Type": "application/json"}).status_code == 413
    # Chunked (no Content-Length): reading stops at the cap, with the same 413.
    chunks = (b" " * 500 for _ in range(10))
    r = c.post("/api/login", content=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json() == {"detail": "request body too large"}
    chunks = (b" " * 100 for _ in range(5))  # under the cap: parsed (an empty JSON document is a 422)
    assert c.post("/api/login", content=chunks, headers={"Content-Type": "application/json"}).status_code == 422


# -- input Python's json accepts and standard JSON does not --------------------------------------------------
NON_STANDARD = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b'{"name": NaN, "token": "x"}',
                b'{"name": "a", "token": "x", "extra": [1, -Infinity]}', b'{"name": "\\ud800", "token": "x"}',
                b'{"name": "a", "token": ' + b"1" * 5000 + b"}",  # over Python's 4300-digit int limit
                b'{"rows": [{"prompt": "p", "responses": ["a", Infinity]}]}', b'{"item_id": 1e400}']
BODY_ROUTES = ["/api/login"] + [path for method, path, body in ROUTES if method == "POST" and path not in
                                ("/api/logout", "/api/next")]  # those two take no body


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_non_standard_json_is_422_on_every_body_route(env, path):
    """NaN, +-Infinity, 1e999 (infinity once parsed), a lone surrogate escape, an over-long integer: a 422 that
    says what is wrong, for an admin and for nobody, never a 500."""
    admin, nobody = env.client("boss"), env.client()
    for body in NON_STANDARD:
        for c in (admin, nobody):
            r = c.post(path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 422, (path, body, r.status_code, r.text[:200])
            assert "JSON" in r.json()["detail"], r.text
    assert admin.get("/api/me").status_code == 200  # the session survives


def test_validation_errors_do_not_echo_the_input(env):
    # A bad login body can carry a real token; a 422 says where and what, without sending the input back.
    r = env.client().post("/api/login", json={"token": env.tokens["ann"]})  # no name
    assert r.status_code == 422 and env.tokens["ann"] not in r.text
    assert r.json()["detail"][0]["loc"] == ["body", "name"]


# -- items parsing, store, CLI -----------------------------------------------------------------------------------
def test_parse_rows_formats():
    items, warnings = parse_rows([
        {"prompt": [{"role": "user", "content": "hi"}], "responses": ["a", "b", "c"], "kind": "math", "extra": 1},
        {"prompt": "p", "chosen": [{"role": "assistant", "content": "c"}], "rejected": [{"role": "assistant", "content": "r"}]},
        {"prompt": "q", "completion": "1"}, {"prompt": "q", "completion": "2"},
        {"responses": ["only one"]},
        "not a dict",
    ])
    assert [len(i.responses) for i in items] == [3, 2, 2]
    assert items[0].kind == "math" and items[0].extra == {"extra": 1}
    assert len(warnings) == 2
    assert items[0].ext_id == parse_rows([{"prompt": [{"role": "user", "content": "hi"}],
                                           "responses": ["a", "b", "c"]}])[0][0].ext_id


def test_unknown_db_url_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="use a SQLite path"):
        open_store("mysql://u:secret@localhost/db")
    assert open_store(f"sqlite:///{tmp_path}/x.sqlite").integrity_check() == "ok"


def test_server_module_never_imports_torch():
    code = ("import sys, rlhfkit.app.server, rlhfkit.cli.label, rlhfkit.app.livemodel, rlhfkit.app.agreement;"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_add_user_import_export_stats(tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli.label import app

    run = CliRunner().invoke
    db = str(tmp_path / "c.sqlite")
    r = run(app, ["add-user", "root", "--db", db, "--admin"])
    assert r.exit_code == 0, r.output
    token = r.output.strip().splitlines()[-1]
    assert len(token) >= 40
    assert run(app, ["add-user", "root", "--db", db]).exit_code == 1  # exists
    assert run(app, ["add-user", "root", "--db", db, "--rotate"]).exit_code == 0
    assert run(app, ["add-user", "a/b", "--db", db]).exit_code != 0
    items = write_items(tmp_path / "i.jsonl", PAIRS)
    r = run(app, ["import", str(items), "--db", db])
    assert r.exit_code == 0 and json.loads(r.output.strip().splitlines()[-1])["added"] == 6
    store = open_store(db)
    uid = store.user_by_name("root")["id"]
    a = store.next_assignment(uid, 1)
    store.add_label(uid, a["item_id"], key(), "left", rationale="why")
    out = tmp_path / "sub" / "prefs.jsonl"
    r = run(app, ["export", "--db", db, "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["rationale"] == "why" and rows[0]["annotator"] == "root"
    assert run(app, ["export", "--db", db, "--out", str(out), "--ties", "bogus"]).exit_code != 0
    r = run(app, ["stats", "--db", db])
    assert r.exit_code == 0 and "labels 1" in r.output
    assert json.loads(run(app, ["stats", "--db", db, "--json"]).output)["progress"]["labels"] == 1
    assert run(app, ["check", "--db", db]).output.strip() == "ok"
