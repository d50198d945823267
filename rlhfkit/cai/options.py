"""The judge options every `cai` command shares, and building a judge from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.cai import constitution as constitution_lib
from rlhfkit.cai.judges import HFJudge, Judge, RuleJudge

JUDGES = ("rule", "hf", "http")


@dataclass
class JudgeConfig:
    judge: Literal["rule", "hf", "http"] = "rule"
    """Which judge: "rule" (the built-in world's rule-based constitutional judge; world prompts only), "hf" (a
    local causal LM at --judge-model), "http" (an OpenAI-compatible endpoint at --base-url)."""
    constitution: str = ""
    """Constitution YAML (default: the one shipped with rlhfkit, rlhfkit/cai/constitution.yaml)."""
    judge_model: str = ""
    """hf: a local directory or hub id of a causal LM; http: the model name sent to the endpoint."""
    base_url: str = ""
    """http: the endpoint's base URL, e.g. http://127.0.0.1:8000/v1 (requests go to <base-url>/chat/completions)."""
    api_key_env: str = "OPENAI_API_KEY"
    """http: the environment variable holding the API key (the key itself is never an option; unset: no key)."""
    cache: str = ""
    """http: the resumable answer cache (JSONL; default: <output>.judge-cache.jsonl)."""
    timeout_s: float = 60.0
    """http: seconds to wait for one answer."""
    max_retries: int = 6
    """http: retries of one request on 429 / 5xx / dropped connections / timeouts / malformed JSON."""
    backoff_s: float = 1.0
    """http: first retry delay; doubles each retry (capped at 60 s; a server's Retry-After is honoured)."""
    requests_per_second: float = 0.0
    """http: at most this many requests per second (0: no limit)."""
    logprobs: bool = True
    """http: ask for the answer token's top log-probabilities (off for servers that refuse them: the answer letter
    then counts as 1 or 0)."""
    judge_batch_size: int = 8
    """hf: judging prompts per forward pass."""
    judge_max_length: int = 1024
    """hf: judging prompts longer than this many tokens are cut from the left."""
    judge_temperature: float = 0.5
    """rule: P(a better) = sigmoid((score_a - score_b) / temperature)."""
    swap: bool = True
    """Judge each pair in both orders and average (position-swap debiasing; consistency is reported)."""
    trust_remote_code: bool = False
    """hf: allow model code from the hub."""

    def validate_judge(self) -> None:
        if self.judge not in JUDGES:
            raise ValueError(f"judge must be one of {list(JUDGES)}, got {self.judge!r}")
        if self.judge == "hf" and not self.judge_model:
            raise ValueError("--judge hf needs --judge-model (a local directory or hub id)")
        if self.judge == "http" and not (self.base_url and self.judge_model):
            raise ValueError("--judge http needs --base-url and --judge-model")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"--base-url must start with http:// or https://, got {self.base_url!r}")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0 or self.requests_per_second < 0:
            raise ValueError("timeout_s must be > 0; max_retries, backoff_s, requests_per_second >= 0")
        if self.judge_batch_size < 1 or self.judge_max_length < 8 or self.judge_temperature <= 0:
            raise ValueError("judge_batch_size >= 1, judge_max_length >= 8 and judge_temperature > 0 required")


def build_judge(cfg: JudgeConfig, default_cache: str = "") -> Judge:
    const = constitution_lib.load(cfg.constitution or None)
    if cfg.judge == "rule":
        return RuleJudge(const, cfg.judge_temperature)
    if cfg.judge == "hf":
        return HFJudge.from_pretrained(cfg.judge_model, const, cfg.trust_remote_code,
                                       batch_size=cfg.judge_batch_size, max_length=cfg.judge_max_length)
    from rlhfkit.cai.http_judge import HTTPJudge

    return HTTPJudge(cfg.base_url, cfg.judge_model, const, cache=cfg.cache or default_cache or None,
                     api_key_env=cfg.api_key_env, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                     backoff_s=cfg.backoff_s, requests_per_second=cfg.requests_per_second, logprobs=cfg.logprobs)
