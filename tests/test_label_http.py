"""The labelling app behind a real `rlhfkit label serve` process, for what only a real HTTP server shows: whether
a bad request leaves its keep-alive connection usable, chunked bodies without Content-Length, and which client
address the login rate limit sees (uvicorn, not the app, reads proxy headers unless told not to)."""

from __future__ import annotations

import http.client

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from rlhfkit.app.loadgen import Server  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("http")
    with Server(d / "labels.sqlite", log=d / "server.log") as srv:
        yield srv


def test_non_standard_json_is_422_and_the_connection_stays_open(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for body in (b"NaN", b'{"name": NaN, "token": "x"}', b'{"name": "a", "token": "x", "n": -Infinity}'):
        conn.request("POST", "/api/login", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        text = r.read()
        assert r.status == 422 and b"standard JSON" in text, (body, r.status, text[:200])
        sock = conn.sock
        assert sock is not None, "the server closed the connection after the 422"
        conn.request("GET", "/api/health")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b'{"ok":true}')
        assert conn.sock is sock  # the same TCP connection answered
    conn.close()


def test_chunked_body_over_the_limit_is_413(server):
    """No Content-Length (chunked transfer): the server stops reading at the 16 MiB cap and answers 413."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    chunks = (b" " * 2**20 for _ in range(17))
    try:
        conn.request("POST", "/api/login", body=chunks, encode_chunked=True,
                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may stop reading once it has answered; the answer is still there to read
    r = conn.getresponse()
    assert r.status == 413 and r.read() == b'{"detail":"request body too large"}'
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/api/login", body=(b" " * 1000 for _ in range(3)), encode_chunked=True,
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert conn.getresponse().status == 422  # under the cap: read and parsed (blank is not JSON)
    conn.close()


def _logins_until_429(srv: Server, n: int) -> list[int]:
    """n failed logins, each with another name and another X-Forwarded-For, as one client on 127.0.0.1."""
    import httpx

    with httpx.Client(base_url=srv.url, timeout=30) as c:
        return [c.post("/api/login", json={"name": f"nobody{i}", "token": "x"},
                       headers={"X-Forwarded-For": f"10.9.{i // 250}.{i % 250 + 1}"}).status_code for i in range(n)]


@pytest.mark.parametrize("trusted", [False, True])
def test_rotating_x_forwarded_for_does_not_bypass_the_login_limit(tmp_path, trusted):
    """uvicorn believes X-Forwarded-For from 127.0.0.1 by default; `serve` must not, unless told with
    --trusted-proxies. 35 failures from one address are over the per-address limit (30 per 5 minutes)."""
    args = ("--trusted-proxies", "127.0.0.1") if trusted else ()
    with Server(tmp_path / "labels.sqlite", log=tmp_path / "server.log", args=args) as srv:
        codes = _logins_until_429(srv, 35)
    if trusted:
        assert codes == [401] * 35  # 35 distinct client addresses, as the named proxy says
    else:
        assert codes[:30] == [401] * 30 and codes[30:] == [429] * 5
