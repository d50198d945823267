"""The OpenAI-compatible HTTP judge against a local fake server (a thread, 127.0.0.1, random port) that drops
connections, answers 429 / 500, malformed JSON and too slowly: the run completes after retries or stops with a
clear error, and a re-run resumes from the on-disk cache without asking again (requests counted on the server).
The API key travels in the Authorization header only: never in the cache, an error or the output."""

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhfkit.cai import constitution as C
from rlhfkit.cai.http_judge import HTTPJudge, _answer_prob
from rlhfkit.cai.judges import JudgeError

KEY = "sk-test-d0-not-leak-7f3a"


class FakeServer:
    """Answers the pairwise prompt by a fixed rule (the response containing "good" wins, with log-probs), after
    playing a script of failures: each request pops the next behaviour ("ok" when the script is empty)."""

    def __init__(self, script=(), slow_s=1.0):
        self.script, self.slow_s = list(script), slow_s
        self.requests, self.answered, self.auth = 0, 0, set()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests += 1
                    fake.auth.add(self.headers.get("Authorization"))
                    what = fake.script.pop(0) if fake.script else "ok"
                try:
                    fake.behave(self, what, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def behave(self, h, what, body):
        if what == "drop":
            h.close_connection = True
            h.connection.shutdown(2)  # no status line at all: the client sees the connection go away
            return
        if what in ("429", "500"):
            h.send_response(int(what))
            if what == "429":
                h.send_header("Retry-After", "0")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if what == "401":
            msg = b'{"error": "invalid api key"}'
            h.send_response(401)
            h.send_header("Content-Length", str(len(msg)))
            h.end_headers()
            h.wfile.write(msg)
            return
        if what == "slow":
            time.sleep(self.slow_s)
        text = body["messages"][0]["content"]
        a = text.split("Response A:")[1].split("Response B:")[0]
        win = "A" if "good" in a else "B"
        if what == "garbage":
            out = b'{"choices": [{"message": {"content": "A"'  # cut off
        else:
            lp = {"A": -0.1, "B": -2.4} if win == "A" else {"A": -2.4, "B": -0.1}
            choice = {"message": {"role": "assistant", "content": win},
                      "logprobs": {"content": [{"token": win, "logprob": lp[win], "top_logprobs": [
                          {"token": t, "logprob": v} for t, v in lp.items()]}]}}
            out = json.dumps({"choices": [choice]}).encode()
            with self.lock:
                self.answered += 1
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(out)))
        h.end_headers()
        h.wfile.write(out)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    made = []

    def make(*a, **kw):
        made.append(FakeServer(*a, **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


PROMPTS = ["q1", "q2", "q3"]
A = ["good one", "bad one", "good two"]
B = ["bad x", "good y", "bad z"]
P_A = 1 / (1 + math.exp(-2.3))  # softmax of log-probs -0.1 vs -2.4


def _judge(url, tmp_path, **kw):
    kw = {"cache": tmp_path / "cache.jsonl", "timeout_s": 0.4, "max_retries": 8, "backoff_s": 0.01,
          "api_key_env": "RLHFKIT_TEST_JUDGE_KEY", **kw}
    return HTTPJudge(url, "fake-model", C.load(), **kw)


def test_survives_drops_429_500_garbage_and_slow_answers_then_resumes_from_cache(server_factory, tmp_path,
                                                                                   monkeypatch, capsys):
    monkeypatch.setenv("RLHFKIT_TEST_JUDGE_KEY", KEY)
    srv = server_factory(["drop", "429", "500", "garbage", "slow", "500", "drop", "garbage"])
    j = _judge(srv.url, tmp_path)
    v = j.compare_detailed(PROMPTS, A, B)
    assert v.p == pytest.approx([P_A, 1 - P_A, P_A]) and j.consistency == 1.0
    assert srv.answered >= 6 and srv.requests == 6 + 8  # six verdicts (both orders), each failure retried
    assert j.stats["retries"] == 8 and j.stats["cache_hits"] == 0
    assert srv.auth == {f"Bearer {KEY}"}
    # a new process on the same cache asks nothing
    before = srv.requests
    again = _judge(srv.url, tmp_path)
    assert again.compare(PROMPTS, A, B) == pytest.approx(v.p)
    assert srv.requests == before and again.stats["cache_hits"] == 6
    cache_text = (tmp_path / "cache.jsonl").read_text()
    assert len(cache_text.splitlines()) == 6 and KEY not in cache_text
    cap = capsys.readouterr()
    assert KEY not in cap.out + cap.err


def test_gives_up_with_a_clear_error_and_the_rerun_pays_only_for_what_is_missing(server_factory, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("RLHFKIT_TEST_JUDGE_KEY", KEY)
    srv = server_factory(["ok", "ok", "ok"] + ["500"] * 50)
    j = _judge(srv.url, tmp_path, max_retries=2)
    with pytest.raises(JudgeError) as e:
        j.compare(PROMPTS, A, B)
    msg = str(e.value)
    assert "gave up after 3 tries, last: HTTP 500" in msg and "cache.jsonl" in msg and KEY not in msg
    assert srv.requests == 3 + 3
    healthy = server_factory()
    j2 = _judge(healthy.url, tmp_path)
    assert j2.compare(PROMPTS, A, B) == pytest.approx([P_A, 1 - P_A, P_A])
    assert healthy.requests == 3 and j2.stats["cache_hits"] == 3  # the three answered before the outage are kept
    # a torn last line (killed mid-write) costs one request, not the cache
    path = tmp_path / "cache.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    j3 = _judge(healthy.url, tmp_path)
    j3.compare(PROMPTS, A, B)
    assert healthy.requests == 4 and j3.stats["cache_hits"] == 5
    assert len([x for x in path.read_text().splitlines() if x.endswith("}")]) == 6


def test_client_errors_stop_at_once_and_name_the_key_variable(server_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("RLHFKIT_TEST_JUDGE_KEY", raising=False)
    srv = server_factory(["401"])
    with pytest.raises(JudgeError, match=r"HTTP 401 \(is \$RLHFKIT_TEST_JUDGE_KEY set to a valid key\?\)"):
        _judge(srv.url, tmp_path).compare(["q"], ["good"], ["bad"])
    assert srv.requests == 1 and srv.auth == {None}  # unset key: no Authorization header


def test_rate_limit_spaces_request_starts(server_factory, tmp_path):
    srv = server_factory()
    j = _judge(srv.url, tmp_path, cache=None, requests_per_second=20)
    t0 = time.monotonic()
    j.compare(PROMPTS, A, B)  # 6 requests: 5 gaps of >= 50 ms
    assert time.monotonic() - t0 >= 0.25 and srv.requests == 6


def test_answer_probability_from_logprobs_or_text():
    lp = {"logprobs": {"content": [{"top_logprobs": [{"token": " A", "logprob": -0.5},
                                                      {"token": "B", "logprob": -1.5}]}]}}
    assert _answer_prob(lp, ("A", "B")) == pytest.approx(1 / (1 + 2.718281828459045 ** -1))
    only_b = {"logprobs": {"content": [{"top_logprobs": [{"token": "B", "logprob": -0.2}]}]}}
    assert _answer_prob(only_b, ("A", "B")) == pytest.approx(1 - 2.718281828459045 ** -0.2)
    assert _answer_prob({"message": {"content": "B."}}, ("A", "B")) == 0.0
    assert _answer_prob({"message": {"content": "Yes"}}, ("Yes", "No")) == 1.0
    assert _answer_prob({"message": {"content": "maybe"}}, ("A", "B")) is None


def test_cai_label_with_the_http_judge_resumes_from_its_default_cache(server_factory, tmp_path, monkeypatch):
    from rlhfkit.cai import label
    from rlhfkit.cai.options import JudgeConfig

    assert not any("key" in f and f != "api_key_env" for f in JudgeConfig.__dataclass_fields__)  # no key option
    monkeypatch.setenv("RLHFKIT_TEST_JUDGE_KEY", KEY)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": p, "responses": [a, b, "good three"]}) + "\n"
                                               for p, a, b in zip(PROMPTS, A, B)))
    srv = server_factory(["500", "drop"])
    cfg = label.Config(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "ai.jsonl"), judge="http",
                       base_url=srv.url, judge_model="fake", api_key_env="RLHFKIT_TEST_JUDGE_KEY", backoff_s=0.01)
    out = label.run(cfg)
    # pairs where both responses say "good": the fake server answers "A" in both orders, a pure position bias,
    # which swap debiasing turns into a tie (dropped) and the consistency rate shows
    assert (out["pairs"], out["labels"], out["ties"]) == (9, 6, 3) and out["position_consistency"] == 6 / 9
    assert out["http"]["retries"] == 2 and srv.requests == 18 + 2
    assert (tmp_path / "ai.jsonl.judge-cache.jsonl").exists()
    rows = [json.loads(x) for x in (tmp_path / "ai.jsonl").read_text().splitlines()]
    assert all("good" in r["chosen"] and "good" not in r["rejected"] for r in rows)
    assert KEY not in (tmp_path / "ai.jsonl").read_text() + (tmp_path / "ai.jsonl.config.yaml").read_text()
    again = label.run(cfg)
    assert srv.requests == 20 and again["http"]["cache_hits"] == 18


def test_cli_stops_with_one_clear_line_when_the_server_keeps_failing(server_factory, tmp_path):
    import os
    import subprocess
    import sys

    srv = server_factory(["500"] * 100)
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "q", "responses": ["good", "bad"]}) + "\n")
    env = {**os.environ, "RLHFKIT_TEST_JUDGE_KEY": KEY}
    r = subprocess.run([sys.executable, "-m", "rlhfkit.cli.main", "cai", "label", "--input", str(tmp_path / "in.jsonl"),
                        "--output", str(tmp_path / "o.jsonl"), "--judge", "http", "--base-url", srv.url,
                        "--judge-model", "m", "--api-key-env", "RLHFKIT_TEST_JUDGE_KEY", "--max-retries", "2",
                        "--backoff-s", "0.01"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: http judge: ") and "gave up after 3 tries, last: HTTP 500" in r.stderr
    assert KEY not in r.stderr + r.stdout and srv.requests == 3 and not (tmp_path / "o.jsonl").exists()
