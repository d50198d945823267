"""`rlhfkit serve-rm`: the schema, 4xx (never 500) on bad input, and `rewards.load_reward("http://...")` against a
real uvicorn on a free loopback port giving the in-process scores."""

import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from rlhfkit.tools import serve_rm  # noqa: E402
from rlhfkit.models.rewards import load_reward  # noqa: E402


def length_reward(prompts, responses):
    """A deterministic reward with an ensemble-like std, for the schema tests."""
    s = torch.tensor([len(r) - len(p if isinstance(p, str) else p[-1]["content"]) for p, r in zip(prompts, responses)],
                     dtype=torch.float32)
    if any(r == "boom" for r in responses):
        raise ValueError("chat template does not render this prompt")
    if any(r == "nan" for r in responses):
        s[0] = float("nan")
    return {"score": s, "std": s.abs() / 8}


@pytest.fixture()
def client():
    return TestClient(serve_rm.create_app(length_reward, max_items=3, max_chars=50, max_body_bytes=2000,
                                          info={"reward": "test"}), raise_server_exceptions=False)


def test_score_and_health(client):
    r = client.post("/score", json={"items": [{"prompt": "ab", "response": "abcd"},
                                              {"prompt": [{"role": "user", "content": "a"}], "response": "abc"}]})
    assert r.status_code == 200 and r.json() == {"scores": [2.0, 2.0], "std": [0.25, 0.25]}
    assert client.post("/score", json={"items": []}).json() == {"scores": []}
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["max_items"] == 3 and h["reward"] == "test"
    assert client.post("/score", json={"items": [{"prompt": "a", "response": "nan"}]}).json()["scores"] == [None]
    assert "ScoreRequest" in client.get("/openapi.json").text  # the documented schema


@pytest.mark.parametrize("body,status,needle", [
    ({"items": [{"prompt": "a", "response": "b"}] * 4}, 413, "at most 3"),
    ({"items": [{"prompt": "a" * 40, "response": "b" * 20}]}, 413, "at most 50"),
    ({"items": [{"prompt": "a", "response": "x" * 3000}]}, 413, "bytes"),
    ({"items": [{"prompt": "a"}]}, 422, "response"),
    ({"items": [{"prompt": 3, "response": "b"}]}, 422, "prompt"),
    ({"items": [{"prompt": [{"role": "robot", "content": "a"}], "response": "b"}]}, 422, "role"),
    ({"items": [{"prompt": [], "response": "b"}]}, 422, "empty"),
    ({"items": [{"prompt": "a", "response": "b", "extra": 1}]}, 422, "extra"),
    ({"things": []}, 422, "items"),
    ([1, 2], 422, ""),
    ({"items": [{"prompt": "a", "response": "boom"}]}, 422, "chat template"),
])
def test_bad_requests_get_4xx_with_a_message(client, body, status, needle):
    r = client.post("/score", json=body)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_malformed_json_is_422(client):
    r = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_load_reward_http_matches_in_process(tmp_path, toy_dir):
    import uvicorn

    from test_rm import pref_rows, _cfg
    from conftest import write_jsonl
    from rlhfkit.algorithms import rm

    write_jsonl(tmp_path / "pref.jsonl", pref_rows(16))
    out = rm.train(_cfg(toy_dir, tmp_path, "ens", max_steps=2, ensemble_size=2))
    local = load_reward(str(out))
    port = _free_port()
    app = serve_rm.create_app(local, info={"reward": str(out)})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started
        rows = pref_rows(5, seed=7)
        prompts, resp = [r["prompt"] for r in rows], [r["chosen"][0]["content"] for r in rows]
        remote = load_reward(f"http://127.0.0.1:{port}", batch_size=2)(prompts, resp)  # 3 requests
        mine = local(prompts, resp)
        torch.testing.assert_close(remote["score"], mine["score"])
        torch.testing.assert_close(remote["std"], mine["std"])
        with pytest.raises(RuntimeError, match="HTTP 422"):
            load_reward(f"http://127.0.0.1:{port}")([[{"role": "robot", "content": "x"}]], ["y"])
    finally:
        server.should_exit = True
        th.join(timeout=10)
