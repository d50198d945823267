"""A judge behind an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp server, ...).

Standard library only (urllib). Each verdict is one request with the constitution's judging prompt as the user
turn, `temperature: 0`, `max_tokens: 1` and, when `logprobs` is on, the top log-probabilities of that one
token, from which P(A better) is read as with the local judge (answer-token probabilities, Lee et al. 2023);
without log-probabilities the answer letter counts as 1 or 0, and any other answer as 0.5 (counted in
`unparsed`).

Built for long labelling runs that pay per request:
- the API key comes from an environment variable only (`api_key_env`, read at each request, never stored on the
  object, never printed, never part of a cache key); unset means no Authorization header (local servers);
- a timeout per request; retries with exponential backoff (`backoff_s * 2**attempt`, capped, a server's
  `Retry-After` honoured) on 429, 5xx, dropped connections, timeouts and malformed JSON; other 4xx stop at once;
  after `max_retries` the run stops with a `JudgeError` naming the last failure;
- a rate limit: at most `requests_per_second` request starts per second;
- a resumable cache: one JSONL line per answered request, keyed by the SHA-256 of the request body (model, messages, parameters),
  flushed and fsynced as it is written, so an interrupted run loses nothing and a re-run never asks twice.
  A torn last line (the process killed mid-write) is skipped on load.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from rlhfkit.cai.constitution import Constitution
from rlhfkit.cai.judges import Judge, JudgeError

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class _Retryable(Exception):
    def __init__(self, what: str, retry_after: float | None = None):
        super().__init__(what)
        self.retry_after = retry_after


class ResponseCache:
    """Append-only JSONL: {"key": sha256, "choice": first choice as the server returned it}."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict] = {}
        if self.path and self.path.exists():
            raw = self.path.read_bytes()
            for line in raw.splitlines():
                try:
                    e = json.loads(line)
                    self.entries[e["key"]] = e["choice"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by an interrupted write: that request is simply asked again
            if raw and not raw.endswith(b"\n"):
                with open(self.path, "ab") as f:  # so the next entry starts on its own line
                    f.write(b"\n")

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, choice: dict) -> None:
        self.entries[key] = choice
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "choice": choice}, ensure_ascii=False, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _answer_prob(choice: dict, labels: tuple[str, str]) -> float | None:
    """P(labels[0]) from a chat-completion choice: from top log-probs when present, else from the text."""
    best: dict[str, float] = {}
    try:
        tops = choice["logprobs"]["content"][0]["top_logprobs"]
        for t in tops:
            tok = str(t["token"]).strip()
            if tok in labels:
                best[tok] = max(best.get(tok, -math.inf), float(t["logprob"]))
    except (KeyError, IndexError, TypeError, ValueError):
        best = {}
    if best:
        pa, pb = (math.exp(best[x]) if x in best else 0.0 for x in labels)
        if labels[0] in best and labels[1] in best:
            return pa / (pa + pb)
        return pa if labels[0] in best else 1.0 - pb
    text = str((choice.get("message") or {}).get("content") or "").strip()
    for i, lab in enumerate(labels):
        if text.startswith(lab):
            return 1.0 - i
    return None


class HTTPJudge(Judge):
    name = "http"

    def __init__(self, base_url: str, model: str, constitution: Constitution, *, cache: str | Path | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 60.0, max_retries: int = 6,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, requests_per_second: float = 0.0,
                 logprobs: bool = True, sleep=time.sleep):
        super().__init__()
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("the HTTP judge needs a model name (--judge-model)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.constitution = model, constitution
        self.api_key_env, self.timeout_s, self.max_retries = api_key_env, timeout_s, max_retries
        self.backoff_s, self.max_backoff_s, self.logprobs = backoff_s, max_backoff_s, logprobs
        self.min_interval = 1.0 / requests_per_second if requests_per_second > 0 else 0.0
        self.cache = ResponseCache(cache)
        self.sleep = sleep
        self._last_start = -math.inf
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0, "unparsed": 0}

    def _body(self, text: str) -> dict:
        body = {"model": self.model, "messages": [{"role": "user", "content": text}], "temperature": 0,
                "max_tokens": 1}
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=5)
        return body

    def _post(self, data: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        wait = self._last_start + self.min_interval - time.monotonic()
        if wait > 0:
            self.sleep(wait)
        self._last_start = time.monotonic()
        self.stats["requests"] += 1
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code in RETRY_STATUS or e.code >= 500:
                ra = e.headers.get("Retry-After") if e.headers else None
                try:
                    ra = float(ra) if ra is not None else None
                except ValueError:
                    ra = None
                raise _Retryable(f"HTTP {e.code}", ra) from None
            detail = e.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
            hint = f" (is ${self.api_key_env} set to a valid key?)" if e.code in (401, 403) else ""
            raise JudgeError(f"http judge: {self.url}: HTTP {e.code}{hint}: {detail[:200]}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise _Retryable(f"connection error: {type(reason).__name__}: {reason}") from None
        try:
            out = json.loads(raw)
            choice = out["choices"][0]
            if not isinstance(choice, dict):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"malformed response ({len(raw)} bytes, not a chat completion)") from None
        return choice

    def ask(self, text: str) -> dict:
        """The first choice of the completion for one judging prompt: from the cache, or asked with retries."""
        body = self._body(text)
        # Keyed by the body (model, messages, parameters), not the URL: the same model behind a moved server or a
        # proxy gives the same answer, and the key never holds credentials.
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        hit = self.cache.get(key)
        if hit is not None:
            self.stats["cache_hits"] += 1
            return hit
        data = json.dumps(body).encode()
        for attempt in range(self.max_retries + 1):
            try:
                choice = self._post(data)
                break
            except _Retryable as e:
                if attempt == self.max_retries:
                    raise JudgeError(f"http judge: {self.url}: gave up after {attempt + 1} tries, last: {e}; "
                                     f"answers so far are cached in {self.cache.path or '(no cache)'}, "
                                     "a re-run resumes there") from None
                self.stats["retries"] += 1
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, self.max_backoff_s))
                self.sleep(delay)
        self.cache.put(key, choice)
        return choice

    def _probs(self, texts: list[str], labels: tuple[str, str]) -> list[float]:
        out = []
        for t in texts:
            p = _answer_prob(self.ask(t), labels)
            if p is None:
                self.stats["unparsed"] += 1
                p = 0.5
            out.append(p)
        return out

    def compare_ordered(self, prompts, first, second):
        fmt = self.constitution.pairwise
        return self._probs([fmt.format(prompt=p, response_a=a, response_b=b)
                            for p, a, b in zip(prompts, first, second, strict=True)], ("A", "B"))

    def score(self, prompts, responses):
        fmt = self.constitution.pointwise
        return self._probs([fmt.format(prompt=p, response=r) for p, r in zip(prompts, responses, strict=True)],
                           ("Yes", "No"))
