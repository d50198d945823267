"""`rlhfkit serve-rm`: a reward model behind HTTP, so later stages (PPO, best-of-n, evaluation) on other processes
or machines can score with it: `rewards.load_reward("http://127.0.0.1:8765")`.

Bound to 127.0.0.1 unless `host` says otherwise (there is no authentication: put it behind a proxy to expose it).
FastAPI and uvicorn are the `ui` extra and are imported only here.

Request schema (JSON), `POST /score`:

    {"items": [{"prompt": "text" | [{"role": "user", "content": "..."}, ...], "response": "text"}, ...]}

Response: ``{"scores": [float, ...]}`` in item order (normalised as the model directory says), plus
``"std": [float, ...]`` for an ensemble. A non-finite score is returned as null. `GET /health` returns the model,
whether it is an ensemble, and the limits. Errors are 4xx with a message, never 500:
  413 more than `max_items` items, or an item over `max_chars` characters, or a body over `max_body_bytes`;
  422 malformed JSON, a wrong field or type, an unknown role, or a prompt the tokenizer's chat template rejects.
The interactive schema is at /docs (OpenAPI).
"""

# No `from __future__ import annotations` here: FastAPI and pydantic read the endpoint and model annotations of
# classes defined inside create_app at runtime, and string annotations would not resolve to those local classes.
import ipaddress
import math
import threading
from dataclasses import dataclass
from typing import Any

from rlhfkit import data as data_lib
from rlhfkit.models.rewards import RewardFn, load_reward


@dataclass
class Config:
    reward: str = ""
    """Reward to serve: a reward-model directory (single or ensemble), or package.module:function."""
    host: str = "127.0.0.1"
    """Interface to bind (loopback by default; the server has no authentication)."""
    port: int = 8765
    """TCP port."""
    max_items: int = 256
    """Most items in one request (more: 413)."""
    max_chars: int = 32_000
    """Most characters in one item's prompt plus response (more: 413)."""
    max_body_bytes: int = 16_000_000
    """Largest request body accepted (more: 413)."""
    batch_size: int = 64
    """Sequences per forward pass."""
    device: str = "auto"
    """Device for an in-process reward model."""
    log_level: str = "info"
    """uvicorn log level."""

    def validate(self) -> None:
        if not self.reward:
            raise ValueError("reward is required")
        if self.max_items < 1 or self.max_chars < 1:
            raise ValueError("max_items and max_chars must be >= 1")


def create_app(reward: RewardFn, max_items: int = 256, max_chars: int = 32_000, max_body_bytes: int = 16_000_000,
               info: dict | None = None):
    """The FastAPI app scoring with `reward` (any RewardFn)."""
    from typing import Literal, Optional, Union

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    class Message(BaseModel):
        model_config = ConfigDict(extra="forbid")
        role: Literal[data_lib.ROLES]  # type: ignore[valid-type]
        content: str

    class Item(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: Union[str, list[Message]] = Field(description="A string, or chat messages [{role, content}]")
        response: str = Field(description="The response text to score")

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: list[Item] = Field(description=f"At most {max_items} (prompt, response) items")

    class ScoreResponse(BaseModel):
        scores: list[Optional[float]]
        std: Optional[list[Optional[float]]] = None

    app = FastAPI(title="rlhfkit reward model", description=__doc__)
    lock = threading.Lock()  # one forward at a time: torch models are not re-entrant across request threads

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > max_body_bytes):
            return JSONResponse({"detail": f"request body over {max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "max_items": max_items, "max_chars": max_chars, **(info or {})}

    @app.post("/score", response_model=ScoreResponse, response_model_exclude_none=True)
    def score(req: ScoreRequest) -> dict:
        if len(req.items) > max_items:
            raise HTTPException(413, f"{len(req.items)} items; at most {max_items} per request")
        prompts: list[Any] = []
        for i, it in enumerate(req.items):
            prompt = it.prompt if isinstance(it.prompt, str) else [m.model_dump() for m in it.prompt]
            n = len(it.response) + (len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt))
            if n > max_chars:
                raise HTTPException(413, f"item {i}: {n} characters; at most {max_chars}")
            if not isinstance(prompt, str) and not prompt:
                raise HTTPException(422, f"item {i}: empty message list")
            prompts.append(prompt)
        if not prompts:
            return {"scores": []}
        try:
            with lock:
                out = reward(prompts, [it.response for it in req.items])
        except (ValueError, KeyError, TypeError) as e:  # DataError (chat template), bad message structure
            raise HTTPException(422, f"cannot score these items: {e}") from None
        res = {"scores": _finite(out["score"].tolist())}
        if "std" in out:
            res["std"] = _finite(out["std"].tolist())
        return res

    return app


def _finite(xs: list[float]) -> list[float | None]:
    return [x if math.isfinite(x) else None for x in xs]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(cfg: Config) -> None:
    import uvicorn

    reward = load_reward(cfg.reward, cfg.device, cfg.batch_size)
    info = {"reward": cfg.reward, "ensemble": bool(getattr(reward, "is_ensemble", False))}
    app = create_app(reward, cfg.max_items, cfg.max_chars, cfg.max_body_bytes, info)
    if not _is_loopback(cfg.host):
        print(f"serve-rm: WARNING binding {cfg.host}: anyone who can reach this port can use the model "
              "(no authentication)")
    print(f"serve-rm: {cfg.reward} on http://{cfg.host}:{cfg.port} (POST /score, GET /health, schema at /docs)")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
