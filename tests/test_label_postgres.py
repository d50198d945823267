"""The labelling store on SQLite and on Postgres: the same behaviour tests run on both backends.

Postgres comes from RLHFKIT_TEST_POSTGRES_URL when set (each test gets its own schema, so the user needs CREATE on
that database), else from a throwaway cluster that this module starts (initdb + pg_ctl, unix socket only, in a temp
dir; as the `postgres` or `nobody` account when running as root, since postgres refuses root). The Postgres cases
skip, with the reason, when the binaries or the python drivers (rlhfkit[postgres]) are missing.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from rlhfkit.app import auth
from rlhfkit.app.db import PgStore, StoreError, open_store
from rlhfkit.app.items import parse_rows
from rlhfkit.app.export import export_rows


# -- a Postgres server ---------------------------------------------------------------------------------------------
def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return versions[-1] if versions else None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="session")
def pg_base_url():
    try:
        import psycopg  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as e:
        pytest.skip(f"Postgres tests need sqlalchemy + psycopg: pip install 'rlhfkit[postgres]' (missing {e.name})")
    if os.environ.get("RLHFKIT_TEST_POSTGRES_URL"):
        yield os.environ["RLHFKIT_TEST_POSTGRES_URL"]
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("Postgres binaries (initdb, pg_ctl) not found: install postgresql, or set "
                    "RLHFKIT_TEST_POSTGRES_URL=postgresql://user:pass@host/db")
    d = tempfile.mkdtemp(prefix="rlhfkit-pg-")  # short: a unix socket path must fit in ~100 bytes
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
        os.chown(d, pwd.getpwnam(user).pw_uid, -1)
        run_as = ["runuser", "-u", user, "--"]
    data = os.path.join(d, "data")
    r = subprocess.run(run_as + [initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"initdb failed:\n{r.stdout}\n{r.stderr}"
    # No TCP at all (listen_addresses=''): the port only names the socket file, so it cannot clash.
    opts = f"-c listen_addresses='' -c unix_socket_directories={d} -c fsync=off -c max_connections=100 -p 5432"
    r = subprocess.run(run_as + [pg_ctl, "-D", data, "-l", os.path.join(d, "log"), "-w", "-t", "60", "-o", opts,
                                 "start"], capture_output=True, text=True, timeout=90)
    if r.returncode != 0:
        log = open(os.path.join(d, "log")).read() if os.path.exists(os.path.join(d, "log")) else ""
        pytest.fail(f"pg_ctl start failed:\n{r.stdout}\n{r.stderr}\n{log}")
    try:
        yield f"postgresql://postgres@/postgres?host={d}"
    finally:
        subprocess.run(run_as + [pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True,
                       timeout=60)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def pg_url(pg_base_url):
    """A fresh schema per test (search_path set through the URL), dropped afterwards."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    schema = "t_" + uuid.uuid4().hex[:12]
    base = make_url(pg_base_url).set(drivername="postgresql+psycopg")
    admin = create_engine(base)
    with admin.begin() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    with admin.begin() as c:
        c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "s.sqlite")
    return request.getfixturevalue("pg_url")


@pytest.fixture()
def store(db_url):
    s = open_store(db_url, synchronous="NORMAL")
    yield s
    s.close()


def items(n: int, prefix: str = "i", k: int = 2) -> list:
    return parse_rows([{"id": f"{prefix}{i}", "prompt": f"q{i}", "responses": [f"r{j} of {i}" for j in range(k)]}
                       for i in range(n)])[0]


def key() -> str:
    return uuid.uuid4().hex


# -- store behaviour, on both backends -----------------------------------------------------------------------------
def test_backend_is_what_was_asked(store, db_url):
    assert isinstance(store, PgStore) == db_url.startswith("postgresql")
    assert store.integrity_check() == "ok" and store.get_meta("schema_version") == "1"


def test_users_and_sessions(store):
    uid = store.add_user("ann", "annotator", "h1")
    assert store.add_user("bob", "admin", "h2") == uid + 1
    with pytest.raises(StoreError, match="exists") as e:
        store.add_user("ann", "annotator", "h3")
    assert e.value.status == 409
    store.create_session("s1", uid, 3600)
    store.create_session("old", uid, -1)  # already expired
    s = store.session_user("s1")
    assert (s["id"], s["name"], s["role"]) == (uid, "ann", "annotator") and s[1] == "ann"
    assert store.session_user("old") is None and store.session_user("nope") is None
    assert store.add_user("ann", "admin", "h4", replace=True) == uid  # rotate: new token, sessions ended
    assert store.session_user("s1") is None
    assert store.user_by_name("ann")["token_hash"] == "h4" and store.user_by_name("ann")["role"] == "admin"
    store.create_session("s2", uid, 3600)
    store.delete_session("s2")
    assert store.session_user("s2") is None
    assert [dict(u)["name"] for u in store.users()] == ["ann", "bob"]


def test_item_import_is_idempotent(store):
    assert store.add_items(items(5)) == 5
    assert store.add_items(items(5)) == 0
    assert store.add_items(items(7)) == 2  # only the two new ones
    assert store.progress(1)["items"] == 7
    it = store.item(1)
    assert it["ext_id"] == "i0" and json.loads(it["responses_json"]) == ["r0 of 0", "r1 of 0"]


def test_assignment_overlap_distinct_annotators_never_twice(store):
    store.add_items(items(5))
    uids = [store.add_user(f"u{k}", "annotator", "h") for k in range(3)]
    seen: dict[int, list[int]] = {}
    for _ in range(10):
        for uid in uids:
            a = store.next_assignment(uid, 2)
            if a is None:
                continue
            assert store.next_assignment(uid, 2)["item_id"] == a["item_id"]  # open assignment: the same again
            store.add_label(uid, a["item_id"], key(), "left")
            seen.setdefault(a["item_id"], []).append(uid)
    assert sorted(seen) == [1, 2, 3, 4, 5]
    assert all(len(v) == 2 and len(set(v)) == 2 for v in seen.values())  # N distinct annotators each
    assert all(store.next_assignment(uid, 2) is None for uid in uids)
    p = store.progress(2)
    assert p["items_complete"] == 5 and p["labels"] == 10 and p["needed"] == 10
    # The database itself refuses a second assignment of an item to one annotator.
    with pytest.raises(store.integrity_errors):
        with store.write() as c:
            c.execute("INSERT INTO assignments (item_id, user_id, state, shown_order, issued_at) "
                      "VALUES (1, ?, 'open', '[0, 1]', 0)", (seen[1][0],))


def test_skip_frees_the_slot_and_lease_expiry(db_url):
    store = open_store(db_url, synchronous="NORMAL", lease_s=0.3)
    store.add_items(items(1))
    a_id, b_id, c_id = (store.add_user(n, "annotator", "h") for n in "abc")
    a = store.next_assignment(a_id, 1)
    assert store.next_assignment(b_id, 1) is None  # the only slot is out
    store.add_label(a_id, a["item_id"], key(), "skip")
    b = store.next_assignment(b_id, 1)
    assert b["item_id"] == a["item_id"] and store.next_assignment(a_id, 1) is None  # never back to the skipper
    time.sleep(0.4)  # b's lease runs out (issued_at is a double: sub-second times compare exactly)
    assert store.next_assignment(c_id, 1)["item_id"] == b["item_id"]
    with pytest.raises(StoreError, match="not assigned"):
        store.add_label(b_id, b["item_id"], key(), "left")
    store.close()


def test_submit_idempotency(store):
    store.add_items(items(2))
    uid = store.add_user("ann", "annotator", "h")
    a = store.next_assignment(uid, 1)
    k = key()
    lab, dup = store.add_label(uid, a["item_id"], k, "right", rationale="because")
    again, dup2 = store.add_label(uid, a["item_id"], k, "right", rationale="because")
    assert (dup, dup2) == (False, True) and again["id"] == lab["id"]
    with pytest.raises(StoreError, match="different request") as e:
        store.add_label(uid, a["item_id"], k, "left", rationale="because")
    assert e.value.status == 409
    with pytest.raises(StoreError, match="already labelled"):
        store.add_label(uid, a["item_id"], key(), "left")
    assert store.count_live_labels() == 1 and [r["id"] for r in store.live_labels()] == [lab["id"]]
    with pytest.raises(store.integrity_errors):  # UNIQUE (user_id, idem_key) holds in the database
        with store.write() as c:
            c.execute("INSERT INTO labels (item_id, user_id, idem_key, choice, shown_order, created_at) "
                      "VALUES (2, ?, ?, 'left', '[0, 1]', 0)", (uid, k))


def test_undo(store):
    store.add_items(items(2) + items(1, "rank", k=3))
    uid = store.add_user("ann", "annotator", "h")
    a = store.next_assignment(uid, 1)
    first, _ = store.add_label(uid, a["item_id"], key(), "left")
    b = store.next_assignment(uid, 1)
    second, _ = store.add_label(uid, b["item_id"], key(), "tie", rationale="same")
    with pytest.raises(StoreError, match="latest") as e:
        store.undo_last(uid, first["id"])
    assert e.value.status == 409
    undone = store.undo_last(uid, second["id"])
    assert undone["id"] == second["id"] and undone["undone"] == 1 and undone["rationale"] == "same"
    assert store.undo_last(uid, second["id"])["undone"] == 1  # idempotent by id
    assert store.next_assignment(uid, 1)["item_id"] == b["item_id"]  # the item comes back
    relabel, dup = store.add_label(uid, b["item_id"], key(), "right")
    assert not dup and relabel["id"] > second["id"]
    c = store.next_assignment(uid, 1)
    with pytest.raises(StoreError, match="permutation"):
        store.add_label(uid, c["item_id"], key(), "rank", [0, 0, 1])
    ranked, _ = store.add_label(uid, c["item_id"], key(), "rank", [2, 0, 1])
    order = json.loads(ranked["shown_order"])
    assert json.loads(ranked["ranking"]) == [order[2], order[0], order[1]]
    assert store.undo_last(uid)["id"] == ranked["id"] and store.undo_last(uid)["id"] == relabel["id"]
    assert [r["id"] for r in store.live_labels()] == [first["id"]]
    with pytest.raises(StoreError) as e:
        store.undo_last(uid, 10**6)
    assert e.value.status == 404


def test_concurrent_submits_every_ack_stored_once(store, db_url):
    """8 annotators in threads x 25 labels, overlap 4 over 60 items; a third of the submits are sent twice at
    once (a double click: two requests racing with one key). Every acknowledged label is stored exactly once.
    The threads use two Store objects, as two server processes would: their in-process write locks are separate,
    so only the database's own serialisation (BEGIN IMMEDIATE / the advisory lock) keeps this correct."""
    n_threads, per, overlap = 8, 25, 4
    stores = [store, open_store(db_url, synchronous="NORMAL")]
    store.add_items(items(60))
    uids = [store.add_user(f"u{k}", "annotator", "h") for k in range(n_threads)]
    acks: list[tuple[int, int, int, str]] = []
    failures: list[str] = []
    barrier = threading.Barrier(n_threads)

    def submit(s, uid, item_id, k, out):
        out.append(s.add_label(uid, item_id, k, "left"))

    def worker(n: int) -> None:
        rng = random.Random(n)
        uid = uids[n]
        twin = ThreadPoolExecutor(1)  # one long-lived helper thread (and connection) per annotator
        barrier.wait()
        try:
            for _ in range(per):
                a = stores[n % 2].next_assignment(uid, overlap, rng)
                if a is None:
                    failures.append(f"u{n}: no item left")
                    return
                k = key()
                got: list = []
                if rng.random() < 0.33:
                    other = twin.submit(submit, stores[(n + 1) % 2], uid, a["item_id"], k, got)
                    submit(stores[n % 2], uid, a["item_id"], k, got)
                    other.result()
                    if sorted(dup for _, dup in got) != [False, True] or got[0][0]["id"] != got[1][0]["id"]:
                        failures.append(f"u{n}: racing duplicates gave {[(r['id'], d) for r, d in got]}")
                else:
                    submit(stores[n % 2], uid, a["item_id"], k, got)
                acks.append((uid, a["item_id"], got[0][0]["id"], k))
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"u{n}: {type(e).__name__}: {e}")
        finally:
            twin.shutdown()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stores[1].close()
    assert not failures, failures
    assert len(acks) == n_threads * per
    stored = {(r["user_id"], r["item_id"], r["id"], r["idem_key"]) for r in store.live_labels()}
    assert len(store.live_labels()) == len(acks) and stored == set(acks)  # every ack, once, nothing else
    per_item: dict[int, set[int]] = {}
    for uid, item_id, _, _ in acks:
        per_item.setdefault(item_id, set()).add(uid)
    assert sum(len(v) for v in per_item.values()) == len(acks)  # no annotator twice on an item
    assert max(len(v) for v in per_item.values()) <= overlap
    n_active = [store.item(i)["n_active"] for i in range(1, 61)]
    assert n_active == [len(per_item.get(i, ())) for i in range(1, 61)]


# -- the same script on both backends gives the same export ----------------------------------------------------------
def _script(store) -> dict:
    rows = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"Q{i}?"}], "responses": [f"a{i}", f"b{i}"],
             **({"kind": "math"} if i % 2 else {})} for i in range(6)]
    rows.append({"id": "r", "prompt": "rank", "responses": ["x", "yy", "zzz", "w"]})
    store.add_items(parse_rows(rows)[0])
    users = [store.add_user(n, "annotator", "h") for n in ("ann", "bob", "cy")]
    rng = random.Random(7)
    choices = ["left", "right", "tie", "both_bad", "skip", "left", "right"]
    n = 0
    for _round in range(6):
        for uid in users:
            a = store.next_assignment(uid, 2, rng)
            if a is None:
                continue
            n += 1
            order = json.loads(a["shown_order"])
            if len(order) > 2:
                ranking = list(range(len(order)))
                rng.shuffle(ranking)
                store.add_label(uid, a["item_id"], f"k{n}", "rank", ranking, rationale=f"ranked {n}")
            else:
                store.add_label(uid, a["item_id"], f"k{n}", choices[n % len(choices)], rationale=f"why {n}")
            if n % 5 == 0:  # undo and relabel
                store.undo_last(uid)
                store.add_label(uid, a["item_id"], f"k{n}b", "right" if len(order) == 2 else "rank",
                                None if len(order) == 2 else list(range(len(order))))
    labels = [{k: r[k] for k in r.keys() if k not in ("created_at", "undone_at")}
              for r in store.live_labels(include_skips=True)]
    return {"labels": labels, "progress": store.progress(2),
            "export": list(export_rows(store)),
            "export_all": list(export_rows(store, ties="keep", rank_pairs="adjacent"))}


def test_export_is_identical_on_sqlite_and_postgres(tmp_path, pg_url):
    lite = open_store(tmp_path / "e.sqlite")
    pg = open_store(pg_url)
    try:
        a, b = _script(lite), _script(pg)
    finally:
        lite.close()
        pg.close()
    assert len(a["export"]) > 5 and any(r["outcome"] == "tie" for r in a["export_all"])
    assert a == b


# -- errors ----------------------------------------------------------------------------------------------------------
def test_postgres_url_without_the_extra_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'rlhfkit\[postgres\]'"):
        open_store("postgresql://u:secret@localhost/db")


def test_cli_reports_db_errors_in_one_line(monkeypatch):
    from typer.testing import CliRunner

    from rlhfkit.cli.label import app

    monkeypatch.setitem(sys.modules, "psycopg", None)
    r = CliRunner().invoke(app, ["add-user", "x", "--db", "postgresql://u:secret@localhost/db"])
    assert r.exit_code == 2 and "rlhfkit[postgres]" in r.output and "secret" not in r.output


def test_unreachable_postgres_is_a_clear_error(tmp_path):
    pytest.importorskip("psycopg")
    pytest.importorskip("sqlalchemy")
    with pytest.raises(ValueError, match="cannot connect") as e:
        open_store(f"postgresql://u:secret@/db?host={tmp_path}/nowhere")
    assert "secret" not in str(e.value)


# -- the app on Postgres -----------------------------------------------------------------------------------------
def test_api_smoke_on_postgres(pg_url, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rlhfkit.app.server import ServerConfig, create_app

    monkeypatch.setattr(auth, "SCRYPT_N", 2**10)
    monkeypatch.chdir(tmp_path)  # Postgres has no db file: the secret defaults to ./<database>.postgres.secret
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Q{i}?", "responses": [f"short {i}",
                                                                                           f"long answer {i}"]}) + "\n"
                                  for i in range(3)))
    app = create_app(ServerConfig(db=pg_url, items=str(items_file), retrain_every=1, features="bow"))
    assert app.state.imported["added"] == 3
    assert (tmp_path / "postgres.postgres.secret").exists()
    token = auth.new_token()
    app.state.store.add_user("boss", "admin", auth.hash_token(token))
    with TestClient(app) as c:
        r = c.post("/api/login", json={"name": "boss", "token": token})
        assert r.status_code == 200, r.text
        c.headers["X-CSRF-Token"] = r.json()["csrf"]
        item = c.post("/api/next").json()["item"]
        body = {"item_id": item["item_id"], "choice": "left", "idempotency_key": key(), "rationale": "clearer"}
        first, again = c.post("/api/labels", json=body).json(), c.post("/api/labels", json=body).json()
        assert (first["duplicate"], again["duplicate"], again["label_id"]) == (False, True, first["label_id"])
        assert c.post("/api/labels", json={**body, "choice": "right"}).status_code == 409
        other = c.post("/api/labels", json={**body, "item_id": item["item_id"] + 1, "idempotency_key": key()})
        assert other.status_code == 409  # not assigned
        rows = [json.loads(x) for x in c.get("/api/admin/export").text.splitlines()]
        left = item["responses"][0]["text"]
        assert [(r["chosen"], r["annotator"], r["rationale"]) for r in rows] == [(left, "boss", "clearer")]
        assert c.get("/api/model").json()["features"] == "bow"
        assert c.get("/api/admin/stats").json()["progress"]["labels"] == 1
    app.state.store.close()
