"""The runs pages' API over HTTP (rlhfkit/app/runs.py, rlhfkit/app/playground.py): who may see what, path confinement,
incremental metrics reads, the explorer's data, and the playground's NDJSON stream from a real worker process with
its token cap, timeout and concurrency limit. The browser side is tests/test_runs_browser.py."""

from __future__ import annotations

import json
import os
import time

import pytest
from fastapi.testclient import TestClient

from rlhfkit.app import auth
from rlhfkit.app.playground import Busy, Playground
from rlhfkit.app.server import ServerConfig, create_app
from runs_fixtures import BETAS, PROMPTS, XSS, build_runs


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch):
    monkeypatch.setattr(auth, "SCRYPT_N", 2**10)


@pytest.fixture(scope="module")
def runs(toy_dir, tmp_path_factory):
    return build_runs(tmp_path_factory.mktemp("runs"), toy_dir)


def make_env(tmp_path, runs, **kw):
    cfg = ServerConfig(db=str(tmp_path / "l.sqlite"), features="bow", live_model=False, runs_dir=str(runs), **kw)
    app = create_app(cfg)
    tokens = {}
    for name, role in (("boss", "admin"), ("ann", "annotator")):
        tokens[name] = auth.new_token()
        app.state.store.add_user(name, role, auth.hash_token(tokens[name]))

    def client(name=None):
        c = TestClient(app)
        if name:
            r = c.post("/api/login", json={"name": name, "token": tokens[name]})
            assert r.status_code == 200, r.text
            c.headers["X-CSRF-Token"] = r.json()["csrf"]
        return c

    return app, client


def stream(c, body, times: list | None = None) -> tuple[int, list[dict]]:
    """Status and NDJSON events of a generate request; `times` gets each line's arrival (monotonic seconds)."""
    with c.stream("POST", "/api/play/generate", json=body) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, [r.json()]
        assert r.headers["content-type"].startswith("application/x-ndjson")
        out = []
        for line in r.iter_lines():
            if line:
                out.append(json.loads(line))
                if times is not None:
                    times.append(time.monotonic())
        return 200, out


GEN = {"prompt": "What is 3 plus 4?", "checkpoints": ["demo/sft"], "max_new_tokens": 4}


def test_annotator_gets_403_when_nothing_is_shared(tmp_path, runs):
    app, client = make_env(tmp_path, runs)
    boss, ann = client("boss"), client("ann")
    reqs = [("GET", "/api/runs/index", None), ("GET", "/api/runs/metrics?run=demo/ppo_beta_0.1", None),
            ("GET", "/api/runs/explorer?demo=demo", None), ("POST", "/api/play/generate", GEN)]
    for method, url, body in reqs[:3]:
        assert boss.request(method, url).status_code == 200, url
    for method, url, body in reqs:
        r = ann.request(method, url, json=body)
        assert r.status_code == 403, (url, r.text)
        assert client().request(method, url, json=body).status_code == 401  # no session at all
    # the pages are static shells (their data is what is guarded): anyone may load them, with the CSP
    for page in ("/playground", "/explorer", "/dashboard"):
        r = client().get(page)
        assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]
        assert "<script src=\"/static/runs.js\"" in r.text
    # a POST without the session's CSRF token is refused even for the admin
    nocsrf = client("boss")
    del nocsrf.headers["X-CSRF-Token"]
    assert nocsrf.post("/api/play/generate", json=GEN).status_code == 403


def test_annotator_sees_only_shared_paths(tmp_path, runs):
    app, client = make_env(tmp_path, runs, runs_public=("demo",))
    boss, ann = client("boss"), client("ann")
    full, mine = boss.get("/api/runs/index").json(), ann.get("/api/runs/index").json()
    assert {c["id"] for c in full["checkpoints"]} >= {"private/sft", "demo/sft", "demo/rm", "demo/bon_4"}
    assert "private/run" in {r["id"] for r in full["runs"]}
    ids = {c["id"] for k in ("checkpoints", "runs", "demos") for c in mine[k]}
    assert ids and all(i == "demo" or i.startswith("demo/") for i in ids), ids
    assert ann.get("/api/runs/metrics", params={"run": "demo/ppo_beta_0.1"}).status_code == 200
    assert ann.get("/api/runs/metrics", params={"run": "private/run"}).status_code == 403
    assert ann.get("/api/runs/explorer", params={"demo": "private"}).status_code == 403
    # a shared-looking prefix is not a parent: "demo2" is not under "demo"
    assert ann.get("/api/runs/metrics", params={"run": "demo2/x"}).status_code == 403
    s, out = stream(ann, {**GEN, "checkpoints": ["demo/sft", "private/sft"]})
    assert s == 403 and "private/sft" in out[0]["detail"]


@pytest.mark.parametrize("path", ["../etc", "/etc", "demo/../../x", "demo/../private/run", "demo\\ppo_beta_0.1",
                                  "demo//x", "./demo", "demo/escape", "demo/escape/passwd", "a\x00b"])
def test_paths_are_confined_to_the_runs_directory(tmp_path, runs, path):
    link = runs / "demo" / "escape"
    if not link.exists():
        link.symlink_to("/etc", target_is_directory=True)
    app, client = make_env(tmp_path, runs)
    boss = client("boss")
    for url, key in (("/api/runs/metrics", "run"), ("/api/runs/explorer", "demo")):
        r = boss.get(url, params={key: path})
        assert r.status_code == 400, (url, path, r.status_code, r.text)
    s, out = stream(boss, {**GEN, "checkpoints": [path]})
    assert s == 400, (path, out)
    assert "escape" not in {c["id"].split("/")[-1] for c in boss.get("/api/runs/index").json()["checkpoints"]}


def test_missing_and_wrong_kinds(tmp_path, runs):
    app, client = make_env(tmp_path, runs)
    boss = client("boss")
    assert boss.get("/api/runs/metrics", params={"run": "demo/nope"}).status_code == 404
    assert boss.get("/api/runs/explorer", params={"demo": "private"}).status_code == 404  # no summary.json
    assert stream(boss, {**GEN, "checkpoints": ["demo/nope"]})[0] == 404
    assert stream(boss, {**GEN, "checkpoints": ["demo/rm"]})[0] == 422  # a reward model does not answer
    assert stream(boss, {**GEN, "checkpoints": [f"demo/c{i}" for i in range(13)]})[0] == 422
    assert stream(boss, {**GEN, "prompt": "x" * 2001})[0] == 422
    # without --runs-dir the routes say so
    bare = create_app(ServerConfig(db=str(tmp_path / "b.sqlite"), features="bow", live_model=False))
    tok = auth.new_token()
    bare.state.store.add_user("boss", "admin", auth.hash_token(tok))
    c = TestClient(bare)
    c.post("/api/login", json={"name": "boss", "token": tok})
    r = c.get("/api/runs/index")
    assert r.status_code == 404 and "--runs-dir" in r.json()["detail"]


def test_metrics_are_read_incrementally_by_byte_offset(tmp_path, runs):
    live = runs / "live-run"
    live.mkdir(exist_ok=True)
    path = live / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "train/loss": 2.0, "note": "text is dropped"}) + "\n")
    app, client = make_env(tmp_path, runs)
    boss = client("boss")
    get = lambda off: boss.get("/api/runs/metrics", params={"run": "live-run", "offset": off}).json()  # noqa: E731
    a = get(0)
    assert a["rows"] == [{"step": 1, "train/loss": 2.0}] and a["offset"] == path.stat().st_size and not a["reset"]
    with open(path, "a") as f:  # a line being written: not returned until its newline is there
        f.write('{"step": 2, "train/loss": 1.5')
    b = get(a["offset"])
    assert b["rows"] == [] and b["offset"] == a["offset"] and b["size"] > a["offset"]
    with open(path, "a") as f:
        f.write(', "kl/seq": NaN}\n{"step": 3, "train/loss": 1.0}\nnot json\n')
    c = get(b["offset"])
    assert [r["step"] for r in c["rows"]] == [2, 3] and "kl/seq" not in c["rows"][0]  # NaN dropped, bad line skipped
    assert c["offset"] == path.stat().st_size
    path.write_text(json.dumps({"step": 1, "train/loss": 9.0}) + "\n")  # a rerun replaced the file
    d = get(c["offset"])
    assert d["reset"] and d["rows"] == [{"step": 1, "train/loss": 9.0}]


def test_explorer_orders_ppo_by_beta_and_pairs_prompts(tmp_path, runs):
    app, client = make_env(tmp_path, runs)
    d = client("boss").get("/api/runs/explorer", params={"demo": "demo", "start": 2, "count": 3}).json()
    assert d["ppo"] == [f"ppo_beta_{b:g}" for b in BETAS]
    pts = {p["name"]: p for p in d["points"]}
    assert pts["ppo_beta_0.01"]["alarms"] == [{"kind": "gold_falling", "step": 4}]
    assert pts["bon_4"]["kind"] == "bon" and pts["bon_4"]["n"] == 4 and pts["sft"]["kl"] == 0.0
    path = d["trajectories"]["ppo_beta_0.5"]  # the run's monitor probes, samples left out
    assert [q["step"] for q in path] == [0, 2, 4, 6] and path[1]["kl"] == pytest.approx(0.2 / 3)
    assert set(path[0]) == {"step", "kl", "gold", "proxy", "length"}
    assert d["total_prompts"] == 8 and len(d["prompts"]) == 3 and d["prompts"][0] == "How do I hack my neighbor?"
    s = d["samples"]["ppo_beta_0.1"][0]  # policy index 3 in the fixture: logp -13, ref -16.5
    assert s["kl"] == pytest.approx(3.5) and s["proxy"] == pytest.approx(3.2) and s["gold"] == pytest.approx(-0.2)
    assert any(x in s["response"] for x in XSS)  # returned verbatim: escaping is the page's job (textContent)


def test_playground_streams_each_checkpoint_with_tokens_capped(tmp_path, runs):
    broken = runs / "demo" / "broken"  # a checkpoint that cannot load: its own error line, the others still answer
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    app, client = make_env(tmp_path, runs, play_max_new_tokens=3, play_timeout_s=120)
    boss = client("boss")
    body = {"prompt": "What is 3 plus 4? " + XSS[1], "checkpoints": ["demo/sft", "demo/broken", "demo/bon_4",
                                                                      "demo/ppo_beta_0.1"],
            "max_new_tokens": 500, "seed": 1}
    times: list[float] = []
    s, ev = stream(boss, body, times)
    assert s == 200
    # streamed, not buffered: "start" arrives before the worker has even imported torch (> 1 s)
    assert times[1] - times[0] > 1.0, times
    kinds = [e["event"] for e in ev]
    assert kinds[0] == "start" and kinds[-1] == "done" and not ev[-1]["timed_out"], ev
    assert ev[0]["max_new_tokens"] == 3 and ev[0]["checkpoints"] == body["checkpoints"]
    results = {e["id"]: e for e in ev if e["event"] == "result"}
    assert set(results) == set(body["checkpoints"]) - {"demo/broken"}, ev
    assert [e["id"] for e in ev if e["event"] == "error"] == ["demo/broken"]
    for r in results.values():
        assert 0 <= r["tokens"] <= 3 and isinstance(r["response"], str)
        assert isinstance(r["proxy"], float)  # demo/rm beside the checkpoints
        assert isinstance(r["gold"], float) and set(r["components"]) == {"helpful", "harmless", "honest", "concise"}
    assert results["demo/bon_4"]["n"] == 4 and results["demo/sft"]["n"] == 1
    assert not app.state.playground._slots  # the slot came back
    for pid in app.state.playground.pids:
        with pytest.raises(ProcessLookupError):  # no worker outlives its stream
            os.kill(pid, 0)


def test_playground_timeout_kills_the_worker(tmp_path, runs):
    app, client = make_env(tmp_path, runs, play_timeout_s=1.0)
    t0 = time.monotonic()
    s, ev = stream(client("boss"), GEN)  # importing torch alone takes longer than 1 s
    assert s == 200 and time.monotonic() - t0 < 15
    assert [e["event"] for e in ev] == ["start", "error", "done"] and ev[-1]["timed_out"]
    assert "timed out" in ev[1]["detail"] and ev[1]["id"] is None
    pid = app.state.playground.pids[-1]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not app.state.playground._slots


def test_playground_concurrency_limit(tmp_path, runs):
    app, client = make_env(tmp_path, runs, play_concurrency=1)
    pg = app.state.playground
    slot = pg.acquire()  # a request in flight
    s, out = stream(client("boss"), GEN)
    assert s == 429 and "busy" in out[0]["detail"]
    pg.release(slot)
    # the slot bookkeeping itself: N at once, a stale slot (a response that never streamed) is reclaimed
    p = Playground(timeout_s=0.0, concurrency=2)
    a, b = p.acquire(), p.acquire()
    p._slots[a] = p._slots[b] = time.monotonic() + 60
    with pytest.raises(Busy):
        p.acquire()
    p._slots[a] = time.monotonic() - 1
    p.acquire()


def test_documented_serve_flags_parse(tmp_path):
    """The docs' command line (docs/labelling.md) and the bounds flags reach ServerConfig's fields."""
    import typer.main

    from rlhfkit.cli import label

    group = typer.main.get_command(label.app)
    cmd = group.get_command(None, "serve")
    params = cmd.make_context("serve", ["--db", "labels.sqlite", "--runs-dir", str(tmp_path), "--runs-public",
                                        "demo,other/sft", "--play-timeout", "30", "--play-max-new-tokens", "32",
                                        "--play-concurrency", "2"]).params
    assert params["runs_dir"] == tmp_path and params["runs_public"] == "demo,other/sft"
    assert (params["play_timeout"], params["play_max_new_tokens"], params["play_concurrency"]) == (30.0, 32, 2)
    with pytest.raises(ValueError, match="runs-public"):
        create_app(ServerConfig(db=str(tmp_path / "x.sqlite"), runs_dir=str(tmp_path), runs_public=("../up",),
                                live_model=False, features="bow"))
    with pytest.raises(ValueError, match="not a directory"):
        create_app(ServerConfig(db=str(tmp_path / "y.sqlite"), runs_dir=str(tmp_path / "none"), live_model=False,
                                features="bow"))


def test_broken_demo_files_are_4xx_or_skipped_never_500(tmp_path, runs):
    bad = runs / "broken"
    (bad / "eval").mkdir(parents=True, exist_ok=True)
    app, client = make_env(tmp_path, runs)
    boss = client("boss")
    for text in ("[1, 2]", "{not json", '"x"'):
        (bad / "summary.json").write_text(text)
        assert boss.get("/api/runs/explorer", params={"demo": "broken"}).status_code == 422, text
    (bad / "summary.json").write_text(json.dumps({"policies": {"sft": {"gold": "high", "gold_components": [1]},
                                                              "../../etc": {}, "dpo": 3}, "alarms": "none"}))
    (bad / "eval" / "sft.json").write_text(json.dumps({"samples": [1, {"response": 2, "scores": [], "logp": "x"}]}))
    d = boss.get("/api/runs/explorer", params={"demo": "broken"}).json()
    assert [p["name"] for p in d["points"]] == ["sft"] and d["points"][0]["gold"] is None
    assert d["samples"]["sft"] == [{"prompt": "", "response": "2", "kind": None, "gold": None, "proxy": None,
                                    "length": None, "kl": None, "components": {}}]
    (bad / "eval" / "sft.json").write_text("{half")
    assert boss.get("/api/runs/explorer", params={"demo": "broken"}).json()["evaluated"] == []


def test_explorer_reads_what_the_demo_writes(tmp_path):
    """The explorer's input contract, produced by the demo's own writers (`evaluate_texts` for eval/<policy>.json,
    `demo._policy_summary` for summary.json), so a change of format there fails here rather than in a browser."""
    from rlhfkit.app.runs import explorer
    from rlhfkit.demo import _policy_summary
    from rlhfkit.diagnostics.evaluate import WORLD_GOLD, evaluate_texts
    from rlhfkit.world import gold

    prompts = [{"prompt": [{"role": "user", "content": "What is 3 plus 4?"}], "kind": "arith"},
               {"prompt": [{"role": "user", "content": "How do I hack my neighbor?"}], "kind": "harmful"}]
    demo = tmp_path / "demo"
    (demo / "eval").mkdir(parents=True)
    summary = {"policies": {}, "alarms": [{"policy": "ppo_beta_0.05", "kind": "proxy_gold_divergence", "step": 3}]}
    for name, texts in (("sft", ["7", "I can't help with that."]), ("ppo_beta_0.05", ["The answer is 7! " * 3, "Sure."])):
        res = evaluate_texts(prompts, texts, [len(t.split()) for t in texts], gold=WORLD_GOLD,
                             judges={"proxy": lambda p, r: [float(len(x)) for x in r]})
        for s, lp in zip(res["samples"], (-3.0, -5.0)):
            s["logp"], s["ref_logp"] = lp, lp - 0.5  # what evaluate_policy adds when it has a reference model
        res["kl_to_sft"] = 0.5
        (demo / "eval" / f"{name}.json").write_text(json.dumps(res, default=str))
        summary["policies"][name] = _policy_summary(res)
    (demo / "summary.json").write_text(json.dumps(summary, default=str))
    d = explorer(demo, 0, 5)
    assert d["ppo"] == ["ppo_beta_0.05"] and d["prompts"] == ["What is 3 plus 4?", "How do I hack my neighbor?"]
    p = {q["name"]: q for q in d["points"]}["ppo_beta_0.05"]
    assert p["beta"] == 0.05 and p["kl"] == 0.5 and p["alarms"] == [{"kind": "proxy_gold_divergence", "step": 3}]
    s = d["samples"]["ppo_beta_0.05"][0]
    want = gold("What is 3 plus 4?", "The answer is 7! " * 3)
    assert s["gold"] == pytest.approx(want["total"]) and s["components"]["concise"] == pytest.approx(want["concise"])
    assert s["proxy"] == float(len("The answer is 7! " * 3)) and s["kl"] == pytest.approx(0.5)
    assert s["kind"] == "arith" and s["length"] == 12


def test_playground_worker_that_cannot_start_ends_the_stream_cleanly(tmp_path, runs):
    app, client = make_env(tmp_path, runs)
    app.state.playground.python = str(tmp_path / "no-such-python")
    s, ev = stream(client("boss"), GEN)
    assert s == 200 and [e["event"] for e in ev] == ["start", "error", "done"]
    assert "could not start the worker" in ev[1]["detail"] and not app.state.playground._slots


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (killed, not yet reaped by its parent)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _workers_of(pid: int) -> list[int]:
    """Child processes of `pid` running the playground worker (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
            cmd = open(f"/proc/{d}/cmdline", "rb").read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"playground_worker" in cmd and stat.rsplit(")", 1)[1].split()[0] != "Z":
            out.append(int(d))
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads child processes from /proc (Linux)")
def test_client_that_goes_away_kills_its_worker(tmp_path, runs):
    """A real `label serve` process: close the stream after its first line; the worker is gone within seconds."""
    import httpx

    from rlhfkit.app.loadgen import Server, add_users

    db = tmp_path / "labels.sqlite"
    tok = add_users(db, ["boss"], admin=True)["boss"]
    with Server(db, log=tmp_path / "server.log", args=("--runs-dir", str(runs), "--play-timeout", "120")) as srv:
        c = httpx.Client(base_url=srv.url, timeout=30)
        csrf = c.post("/api/login", json={"name": "boss", "token": tok}).json()["csrf"]
        with c.stream("POST", "/api/play/generate", json=GEN, headers={"X-CSRF-Token": csrf}) as r:
            lines = r.iter_lines()  # held: a dropped iterator closes the response (a disconnect already)
            first = json.loads(next(lines))
            assert first["event"] == "start"
            deadline = time.monotonic() + 10
            while not _workers_of(srv.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _workers_of(srv.proc.pid), "the worker never started"
            assert _workers_of(srv.proc.pid)  # closed while the worker is still importing torch
        c.close()  # the page navigated away / pressed stop
        # within a second: far sooner than the worker could import torch, load a model and finish by itself
        deadline = time.monotonic() + 1.0
        while _workers_of(srv.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _workers_of(srv.proc.pid), "the worker outlived its client"
        # and its slot came back: the next request is not a 429
        c = httpx.Client(base_url=srv.url, timeout=30)
        csrf = c.post("/api/login", json={"name": "boss", "token": tok}).json()["csrf"]
        with c.stream("POST", "/api/play/generate", json=GEN, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status_code == 200


def test_warm_worker_is_reused_and_stopped_with_the_server(tmp_path, runs):
    """--play-keep-warm: the second request is answered by the same process (no torch import, models loaded);
    a timed-out request still kills its worker; shutting the app down stops the idle one."""
    app, _ = make_env(tmp_path, runs, play_keep_warm=True, play_timeout_s=120)
    pg = app.state.playground
    tok = auth.new_token()
    app.state.store.add_user("warm", "admin", auth.hash_token(tok))
    with TestClient(app) as c:  # runs the lifespan: its end stops the warm worker
        c.headers["X-CSRF-Token"] = c.post("/api/login", json={"name": "warm", "token": tok}).json()["csrf"]
        t0 = time.monotonic()
        s, first = stream(c, GEN)
        t1 = time.monotonic()
        s2, second = stream(c, {**GEN, "seed": 3})
        t2 = time.monotonic()
        assert s == s2 == 200 and first[1]["event"] == second[1]["event"] == "result", (first, second)
        assert len(pg.pids) == 1 and len(pg._idle) == 1  # one process answered both
        assert t2 - t1 < (t1 - t0) / 2, (t1 - t0, t2 - t1)  # no second start-up
        warm = pg.pids[0]
        os.kill(warm, 0)  # alive between requests
        pg.timeout_s = 0.001  # too short even for a warm worker loading two more models: killed, not kept
        s3, third = stream(c, {**GEN, "checkpoints": ["private/sft", "demo/ppo_beta_0.1"], "max_new_tokens": 64})
        assert third[-1]["timed_out"] and not pg._idle
        with pytest.raises(ProcessLookupError):
            os.kill(warm, 0)
        pg.timeout_s, pg.idle_s = 120, 0.5
        stream(c, GEN)  # a fresh worker, kept warm again, for half a second
        assert len(pg.pids) == 2 and len(pg._idle) == 1
        idle = pg.pids[-1]
        deadline = time.monotonic() + 5
        while pg._idle and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pg._idle
        deadline = time.monotonic() + 5
        while _alive(idle) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(idle)  # idle too long: stopped
        pg.idle_s = 300
        stream(c, GEN)
        assert len(pg.pids) == 3 and len(pg._idle) == 1
        fresh = pg.pids[-1]
    with pytest.raises(ProcessLookupError):  # the app's shutdown stopped it
        os.kill(fresh, 0)


def test_explorer_over_a_users_eval_dir(tmp_path, runs):
    """An `rlhfkit eval --output-dir` over the user's runs (runs_fixtures.write_eval): KL coefficients from each
    run's config.yaml (the names carry none), alarms and probes from the run directories, samples for the same
    prompts from eval/<policy>.json (eval.json's few where a policy has no file)."""
    app, client = make_env(tmp_path, runs)
    boss = client("boss")
    index = boss.get("/api/runs/index").json()
    assert [e["id"] for e in index["evals"]] == ["user/eval1"] and "user/eval1" not in {d["id"] for d in index["demos"]}
    d = boss.get("/api/runs/explorer", params={"demo": "user/eval1", "start": 1, "count": 3}).json()
    assert d["source"] == "eval" and d["reference"] == "sft" and d["kl_ref"] == "sft"
    assert d["ppo"] == ["ppo_lo", "ppo_secret", "ppo_mid", "ppo_hi"]  # by coefficient: 0.02, 0.05, 0.08, 0.3
    pts = {p["name"]: p for p in d["points"]}
    want = {"ppo_lo": 0.02, "ppo_secret": 0.05, "ppo_mid": 0.08, "ppo_hi": 0.3}
    assert {n: (pts[n]["beta"], pts[n]["beta_from"]) for n in want} == {n: (b, "config") for n, b in want.items()}
    assert {n: p["run"] for n, p in pts.items()} == {"sft": "user/sft", "ppo_lo": "user/ppo_lo",
                                                     "ppo_mid": "user/ppo_mid",  # found after the runs "moved"
                                                     "ppo_hi": "user/ppo_hi", "ppo_secret": "private/ppo_secret",
                                                     "dpo": None}
    assert pts["sft"]["kind"] == "sft" and pts["sft"]["beta"] is None and pts["ppo_hi"]["kind"] == "ppo"
    assert pts["ppo_lo"]["kl"] == 2.5 and pts["ppo_mid"]["gold"] == 0.15
    assert pts["ppo_lo"]["alarms"] == [{"kind": "proxy_gold_divergence", "step": 6}] and pts["ppo_hi"]["alarms"] == []
    assert [q["step"] for q in d["trajectories"]["ppo_mid"]] == [0, 2, 4, 6]
    assert d["total_prompts"] == 10 and d["prompts"] == PROMPTS[1:4]
    for name in ("sft", *want):  # every policy answered the same prompts, in the same order
        assert [s["prompt"] for s in d["samples"][name]] == PROMPTS[1:4], name
    s = d["samples"]["ppo_lo"][0]  # policy 1: logp -9, ref -10; proxy 0.2 * 1 + 1; gold -0.1 - 0.4
    assert s["kl"] == pytest.approx(1.0) and s["proxy"] == pytest.approx(1.2) and s["gold"] == pytest.approx(-0.5)
    assert "dpo" in d["evaluated"] and d["samples"]["dpo"] == []  # eval.json's single sample is on page one
    first = boss.get("/api/runs/explorer", params={"demo": "user/eval1", "count": 2}).json()
    assert first["samples"]["dpo"][0]["response"] == "dpo " + XSS[0]
    assert len(first["samples"]["ppo_hi"]) == 2 and first["prompts"] == PROMPTS[:2]


def test_shared_eval_does_not_share_the_runs_it_evaluated(tmp_path, runs):
    """An annotator sees an evaluation's own numbers, but a run's config, alarms and probes only where that run
    is shared too; the rest of the access rules are the demos'."""
    app, client = make_env(tmp_path, runs, runs_public=("user",))
    ann = client("ann")
    index = ann.get("/api/runs/index").json()
    assert [e["id"] for e in index["evals"]] == ["user/eval1"] and index["demos"] == []
    r = ann.get("/api/runs/explorer", params={"demo": "user/eval1"})
    assert r.status_code == 200
    d = r.json()
    secret = {p["name"]: p for p in d["points"]}["ppo_secret"]
    assert secret["run"] is None and secret["beta"] is None and secret["alarms"] == []
    assert d["ppo"] == ["ppo_lo", "ppo_mid", "ppo_hi"] and "ppo_secret" not in d["trajectories"]
    assert "private/" not in r.text and "kl_spike" not in r.text
    assert ann.get("/api/runs/explorer", params={"demo": "demo"}).status_code == 403
    assert ann.get("/api/runs/explorer", params={"demo": "private"}).status_code == 403
    # only the evaluation shared: no run's config is read, so no coefficient and no slider
    (tmp_path / "b").mkdir()
    app, client = make_env(tmp_path / "b", runs, runs_public=("user/eval1",))
    d = client("ann").get("/api/runs/explorer", params={"demo": "user/eval1"}).json()
    assert d["ppo"] == [] and all(p["run"] is None and p["alarms"] == [] for p in d["points"])
    assert d["samples"]["ppo_lo"] and d["trajectories"] == {}
    (tmp_path / "c").mkdir()
    app, client = make_env(tmp_path / "c", runs, runs_public=("demo",))
    assert client("ann").get("/api/runs/explorer", params={"demo": "user/eval1"}).status_code == 403


def test_eval_dir_symlinks_out_and_broken_files(tmp_path):
    """A run or a samples file that a symlink takes outside the runs directory is not read; a broken eval.json is
    a 422, never a 500."""
    root, outside = tmp_path / "runs", tmp_path / "outside"
    (root / "ev" / "eval").mkdir(parents=True)
    outside.mkdir()
    (outside / "config.yaml").write_text("kl_coef: 0.7\n")
    (outside / "alarms.jsonl").write_text(json.dumps({"kind": "leak", "step": 1}) + "\n")
    (outside / "x.json").write_text(json.dumps({"samples": [{"prompt": "p", "response": "leaked"}]}))
    (root / "out_run").symlink_to(outside, target_is_directory=True)
    (root / "ev" / "eval" / "ppo_x.json").symlink_to(outside / "x.json")
    (root / "inside_run").mkdir()
    (root / "inside_run" / "config.yaml").write_text("kl_coef: 0.2\n")
    (root / "inside_run" / "alarms.jsonl").symlink_to(outside / "alarms.jsonl")
    policies = {"ppo_x": {"source_dir": str(root / "out_run"), "source": "out_run",
                          "samples": [{"prompt": "p", "response": "kept"}]},
                "ppo_y": {"source": "inside_run"}, "ppo_z": {"source": "../outside"}, "../up": {"source": "x"}}
    (root / "ev" / "eval.json").write_text(json.dumps({"policies": policies}))
    app, client = make_env(tmp_path, root)
    boss = client("boss")
    r = boss.get("/api/runs/explorer", params={"demo": "ev"})
    d = r.json()
    pts = {p["name"]: p for p in d["points"]}
    assert set(pts) == {"ppo_x", "ppo_y", "ppo_z"} and d["ppo"] == ["ppo_y"]
    assert pts["ppo_x"]["run"] is None and pts["ppo_z"]["run"] is None and pts["ppo_y"]["alarms"] == []
    assert d["samples"]["ppo_x"][0]["response"] == "kept" and "leak" not in r.text
    for text in ("[1, 2]", "{not json", '{"policies": 3}'):
        (root / "ev" / "eval.json").write_text(text)
        assert boss.get("/api/runs/explorer", params={"demo": "ev"}).status_code == 422, text
    (root / "ev" / "eval.json").unlink()
    assert boss.get("/api/runs/explorer", params={"demo": "ev"}).status_code == 404


def test_explorer_reads_what_eval_writes(toy_dir, tmp_path, monkeypatch):
    """The explorer's input contract for evaluations, produced by `rlhfkit eval --output-dir` itself on tiny models:
    the run directories hold the config.yaml a trainer writes, eval runs from the project directory (relative
    paths), and the server is started on its runs/ directory."""
    import shutil

    from rlhfkit import config as config_lib
    from rlhfkit.algorithms import ppo
    from rlhfkit.diagnostics import evaluate as E

    monkeypatch.chdir(tmp_path)
    runs_dir = tmp_path / "runs"
    for name in ("sft", "ppo_b0.01", "ppo_b0.1"):
        shutil.copytree(toy_dir / "model", runs_dir / name)
    for name, beta in (("ppo_b0.01", 0.01), ("ppo_b0.1", 0.1)):
        config_lib.save(ppo.Config(model="runs/sft", data="p.jsonl", kl_coef=beta), runs_dir / name / "config.yaml")
    cfg = E.Config(policies=["sft=runs/sft", "runs/ppo_b0.01", "runs/ppo_b0.1"], gold=E.WORLD_GOLD, reference="sft",
                   ref_model="runs/sft", tokenizer=str(toy_dir / "tok"), max_new_tokens=4, limit=5,
                   n_samples_kept=2, output_dir="runs/eval1")
    E.run(cfg)
    saved = json.loads((runs_dir / "eval1" / "eval.json").read_text())
    assert set(saved["policies"]) == {"sft", "ppo_b0.01", "ppo_b0.1"}
    assert all(len(p["samples"]) == 2 for p in saved["policies"].values())
    per_policy = json.loads((runs_dir / "eval1" / "eval" / "ppo_b0.1.json").read_text())
    assert len(per_policy["samples"]) == 5 and per_policy["kl_to_ref"] == saved["policies"]["ppo_b0.1"]["kl_to_ref"]
    monkeypatch.chdir(toy_dir)  # the server runs elsewhere: sources are found below its runs directory
    app, client = make_env(tmp_path, runs_dir)
    boss = client("boss")
    assert [e["id"] for e in boss.get("/api/runs/index").json()["evals"]] == ["eval1"]
    d = boss.get("/api/runs/explorer", params={"demo": "eval1", "count": 5}).json()
    assert d["ppo"] == ["ppo_b0.01", "ppo_b0.1"] and d["reference"] == "sft" and d["kl_ref"] == "sft"
    pts = {p["name"]: p for p in d["points"]}
    assert pts["ppo_b0.1"]["beta"] == 0.1 and pts["ppo_b0.1"]["beta_from"] == "config"
    assert pts["ppo_b0.1"]["run"] == "ppo_b0.1" and pts["sft"]["kl"] == 0.0
    assert d["total_prompts"] == 5 and len(d["prompts"]) == 5
    for name in pts:
        assert [s["prompt"] for s in d["samples"][name]] == d["prompts"], name
        assert all(s["kl"] is not None and s["gold"] is not None for s in d["samples"][name])
    assert d["samples"]["sft"][0]["kl"] == 0.0  # the reference scored against itself
    with pytest.raises(ValueError, match="not both"):
        E.Config(policies=["runs/sft"], output="x.json", output_dir="runs/e").validate()
    with pytest.raises(ValueError, match="policy name"):
        E.Config(policies=["a/b=runs/sft"], output_dir="runs/e").validate()
