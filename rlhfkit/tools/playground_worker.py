"""The playground's generation worker: `python -m rlhfkit.tools.playground_worker` reads one request (a JSON object)
on stdin, writes one JSON line per checkpoint on stdout as soon as that checkpoint has answered, and exits.

The web app never imports torch (docs/DESIGN.md): `rlhfkit.app.playground` starts this process for each request,
with a wall-clock limit (the whole process group is killed when it runs out), a cap on new tokens and a cap on
how many run at once. A fresh interpreter per request costs the torch import (a few seconds on a CPU) but means a
hung or crashed generation never leaves anything behind in the server.

Request:

    {"prompt": "user message text", "max_new_tokens": 48, "temperature": 1.0, "seed": 0, "threads": 1,
     "checkpoints": [{"id": "demo/sft", "path": "/abs/demo/sft", "reward": "/abs/demo/rm" | null, "n": 1}, ...]}

`n` > 1 is best-of-n: n samples from that checkpoint, the one the reward model scores highest is the answer.
Each checkpoint answers with the same seed, so two policies are compared on the same random draws.

Lines written (one per checkpoint, in request order, then a last one):

    {"event": "result", "id", "response", "tokens", "finished", "proxy" | null, "gold" | null,
     "components": {helpful, harmless, honest, concise} | null, "n", "seconds"}
    {"event": "error", "id", "detail"}
    {"event": "worker_done"}

`gold` is the built-in world's gold judge, on prompts that are world prompts (null on any other text).

With `--serve` (the server's --play-keep-warm) the worker reads one request per line and answers each in turn,
keeping torch imported and its models loaded; the server still kills it on a timeout or a lost client.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

MAX_NEW_TOKENS = 512  # the worker's own ceiling, whatever the request says (the server caps lower)
MAX_N = 32  # best-of-n
MAX_PROMPT_TOKENS = 512


def gold_scores(prompt: str, response: str) -> tuple[float | None, dict | None]:
    """The world's gold total and components, or (None, None) when the prompt is not a world prompt."""
    from rlhfkit.world import COMPONENTS, gold

    try:
        g = gold(prompt, response)
    except ValueError:  # parse_prompt: not a world prompt, there is no ground truth to judge against
        return None, None
    return g["total"], {c: g[c] for c in COMPONENTS}


class Models:
    """Checkpoints and reward models loaded once (a best-of-n entry reuses its policy's). A warm worker (--serve)
    keeps them between requests: at most MAX_CACHED of each, and one whose files changed is loaded again."""

    MAX_CACHED = 8

    def __init__(self):
        self.policies: dict[str, tuple[Any, Any]] = {}
        self.rewards: dict[str, Any] = {}
        self.stamps: dict[str, float] = {}

    @staticmethod
    def stamp(path: str) -> float:
        from pathlib import Path

        files = [f for f in Path(path).glob("*") if f.suffix in (".safetensors", ".json")]
        return max((f.stat().st_mtime for f in files), default=0.0)

    def forget_changed(self) -> None:
        for cache in (self.policies, self.rewards):
            for path in list(cache):
                if len(cache) > self.MAX_CACHED or self.stamps.get(path) != self.stamp(path):
                    del cache[path]

    def policy(self, path: str):
        if path not in self.policies:
            from rlhfkit import models

            tok = models.load_tokenizer(path)
            self.stamps[path] = self.stamp(path)
            self.policies[path] = (models.load_causal_lm(path, tok).to(models.inference_device()), tok)
        return self.policies[path]

    def reward(self, path: str):
        if path not in self.rewards:
            from rlhfkit.models.rewards import load_reward

            self.stamps[path] = self.stamp(path)
            self.rewards[path] = load_reward(path)
        return self.rewards[path]


def answer(models: Models, req: dict, ck: dict) -> dict:
    """One checkpoint's answer to the request's prompt: sample (n times for best-of-n), score, judge."""
    import torch

    from rlhfkit import data as data_lib
    from rlhfkit.rollout.generate import sample

    t0 = time.perf_counter()
    model, tok = models.policy(ck["path"])
    n = max(1, min(int(ck.get("n", 1)), MAX_N))
    if n > 1 and not ck.get("reward"):
        raise ValueError("best-of-n needs a reward model")
    prompt = req["prompt"]
    messages = [{"role": "user", "content": prompt}]
    # the prompt's last MAX_PROMPT_TOKENS tokens (the chat template's assistant prefix is at the end), as evaluation
    ids = data_lib.encode_prompt(tok, messages if tok.chat_template else prompt)[-MAX_PROMPT_TOKENS:]
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(req.get("seed", 0)))
    max_new = max(1, min(int(req.get("max_new_tokens", 48)), MAX_NEW_TOKENS))
    s = sample(model, [ids] * n, tok.eos_token_id, tok.pad_token_id, max_new, float(req.get("temperature", 1.0)),
               generator=gen)
    texts = [tok.decode(r, skip_special_tokens=True) for r in s.response_ids]
    proxy = None
    pick = 0
    if ck.get("reward"):
        scores = models.reward(ck["reward"])([messages] * n, texts)["score"].tolist()
        pick = max(range(n), key=lambda i: scores[i])
        proxy = float(scores[pick])
    g, comps = gold_scores(prompt, texts[pick])
    eos = tok.eos_token_id
    tokens = len([t for t in s.response_ids[pick] if t != eos])
    return {"event": "result", "id": ck["id"], "response": texts[pick], "tokens": tokens,
            "finished": bool(s.has_eos[pick]), "proxy": proxy, "gold": g, "components": comps, "n": n,
            "seconds": round(time.perf_counter() - t0, 3)}


def main() -> int:
    # The protocol owns the real stdout; anything a library prints goes to stderr instead of corrupting it.
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(event: dict) -> None:
        out.write(json.dumps(event, ensure_ascii=False) + "\n")
        out.flush()

    import torch

    serve = "--serve" in sys.argv[1:]
    models = Models()
    # one request (the whole of stdin), or with --serve one per line until stdin closes (the server kept it warm)
    for line in (sys.stdin if serve else [sys.stdin.read()]):
        if not line.strip():
            continue
        req = json.loads(line)
        torch.set_num_threads(max(1, int(req.get("threads", 1))))
        if serve:
            models.forget_changed()
        for ck in req["checkpoints"]:
            try:
                emit(answer(models, req, ck))
            except Exception as e:  # one checkpoint failing (bad files, no reward model) does not stop the others
                emit({"event": "error", "id": ck.get("id"), "detail": f"{type(e).__name__}: {e}"[:500]})
        emit({"event": "worker_done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
