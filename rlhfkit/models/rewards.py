"""Reward sources for PPO / GRPO / best-of-n / evaluation: one interface for a trained reward model, a served one
(`rlhfkit serve-rm`) and a plain Python function (a verifiable reward, the world's gold judge).

    from rlhfkit.models.rewards import load_reward, load_rewards
    rm = load_reward("runs/rm")                          # a reward-model directory (single or ensemble)
    rm = load_reward("http://127.0.0.1:8765")            # a served reward model
    rm = load_reward("rlhfkit.world:gold_reward")        # f(prompt texts, responses) -> list[float]
    out = rm(prompts, responses)                         # {"score": (B,)} (+ {"std": (B,)} for ensembles)
    both = load_rewards(["runs/rm", "rlhfkit.world:correct_reward"], weights=[1.0, 0.5])   # multi-objective

Prompts are as in the data (a string or a message list); responses are strings. Every returned tensor is a CPU
float32 tensor of shape (B,).

A reward-model directory is scored exactly as `rlhfkit rm` trained it (`encode_scored`): prompt tokens via
`data.encode_prompt`, response via `data.encode_completion` (ending in EOS, so a causal LM's score is read at a
real end token), the prompt cut from the LEFT when too long, right padding, no grad. Its `rlhfkit.json` may hold
    {"max_length": 512, "normalize": {"gain": g, "bias": b}}    score = g * raw + b
(the gain/bias that give mean 0, std 1 on reference samples; PITFALLS PPO #1) and, for an ensemble directory,
    {"ensemble": ["member-0", "member-1", ...]}                 score = mean over members, std = their std
where each member is itself a reward-model directory with its own normalisation (so members share one scale and
their std is a meaningful disagreement signal).
"""

from __future__ import annotations

import importlib
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from rlhfkit import data as data_lib

DEFAULT_MAX_LENGTH = 512


class RewardFn(Protocol):
    def __call__(self, prompts: list[Any], responses: list[str]) -> dict[str, torch.Tensor]:
        """{"score": (B,) float tensor}, plus {"std": (B,)} for ensembles."""
        ...


# ----------------------------------------------------------------------------------------------- tokenisation
def encode_scored(tokenizer, prompt: Any, response: Any, max_length: int, counter: dict | None = None) -> list[int]:
    """Token ids of prompt + response for a reward model, as training and scoring both see them.

    The response ends in EOS (encoders: SEP), so a causal LM's head reads a real end-of-response token. When the
    pair is too long the prompt is cut from the left (`data.truncate_pair`, counted in `counter`), except that a
    leading BOS / CLS token is kept: an encoder's pooled output reads position 0.
    """
    prefix, completion = encode_scored_parts(tokenizer, prompt, response, max_length, counter)
    return prefix + completion


def encode_scored_parts(tokenizer, prompt: Any, response: Any, max_length: int,
                        counter: dict | None = None) -> tuple[list[int], list[int]]:
    """`encode_scored` split into (prompt part, response part): responses to one prompt share the first."""
    p = data_lib.encode_prompt(tokenizer, prompt)
    c = data_lib.encode_completion(tokenizer, prompt, response)
    lead: list[int] = []
    specials = {tokenizer.bos_token_id, getattr(tokenizer, "cls_token_id", None)} - {None}
    if len(p) + len(c) > max_length and p and p[0] in specials:
        lead, p = p[:1], p[1:]
    p, c = data_lib.truncate_pair(p, c, max_length - len(lead), counter=counter)
    return lead + p, c


# ----------------------------------------------------------------------------------------------- forward
def is_last_token_model(model: torch.nn.Module) -> bool:
    """Decoder reward models (HF's *ForSequenceClassification on a causal LM) have a linear `score` head read at
    the last token; encoders (BERT, MiniLM, DeBERTa) have a `classifier` on the pooled output. Under LoRA the head
    is wrapped by peft (ModulesToSaveWrapper: the original and its trainable copy), and still called as `score`."""
    head = getattr(model, "score", None)
    return isinstance(getattr(head, "original_module", head), torch.nn.Linear)


def forward_scores(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar rewards (B,) of right-padded sequences (B, T).

    Causal LM: the head is applied to the hidden state of the LAST ATTENDED token only (found from the attention
    mask, so it is right even when pad == eos, where HF's pad-id search would read the token before EOS). With
    right padding the positions equal HF's default, so a plain `AutoModelForSequenceClassification` reload gives
    the same scores. Encoders: the model's own pooled head.
    """
    if is_last_token_model(model):
        from rlhfkit.models.modeling import hidden_states

        h = hidden_states(model, input_ids, attention_mask)  # (B, T, H)
        last = attention_mask.long().sum(-1) - 1  # (B,) right padding: index of the final real token
        h_last = h[torch.arange(h.shape[0], device=h.device), last]  # (B, H)
        return model.score(h_last).squeeze(-1).float()
    return model(input_ids=input_ids, attention_mask=attention_mask.long()).logits.squeeze(-1).float()


def layout_scores(model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor,
                  last: torch.Tensor) -> torch.Tensor:
    """Scalar rewards of a decoder reward model on a `layout.build_layout` batch: the head reads each sequence's
    final token (`last`, flat indices). Same values as `forward_scores` on the sequences as padded rows."""
    from rlhfkit.models.layout import layout_hidden_states

    return model.score(layout_hidden_states(model, input_ids, position_ids, mask, needed=last)).squeeze(-1).float()


# ----------------------------------------------------------------------------------------------- reward models
def read_meta(path: str | Path) -> dict:
    p = Path(path) / "rlhfkit.json"
    return json.loads(p.read_text()) if p.exists() else {}


def member_dirs(path: str | Path) -> list[Path]:
    """The member directories of a reward model: [path] for a single model, the listed ones for an ensemble."""
    path = Path(path)
    names = read_meta(path).get("ensemble")
    return [path / n for n in names] if names else [path]


class RewardModel:
    """An in-process reward model (single or ensemble) as a RewardFn. Normalisation from rlhfkit.json applied."""

    def __init__(self, path: str | Path, device: str | torch.device = "auto", batch_size: int = 64,
                 trust_remote_code: bool = False):
        from rlhfkit import models

        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{path}: reward model directory not found")
        self.device = models.inference_device(device)
        self.batch_size = batch_size
        self.members = []  # (model, tokenizer, max_length, gain, bias)
        for d in member_dirs(self.path):
            meta = read_meta(d)
            tok = models.load_tokenizer(str(d), trust_remote_code)
            model = models.load_sequence_classifier(str(d), tok, trust_remote_code).to(self.device).eval()
            norm = meta.get("normalize") or {}
            max_length = int(meta.get("max_length") or DEFAULT_MAX_LENGTH)
            self.members.append((model, tok, max_length, float(norm.get("gain", 1.0)), float(norm.get("bias", 0.0))))
        self.truncation: dict = {}

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    def raw_scores(self, model, tokenizer, max_length: int, prompts: list[Any], responses: list[Any]) -> torch.Tensor:
        with torch.inference_mode():  # cheaper per op than no_grad
            out = self._raw_scores(model, tokenizer, max_length, prompts, responses)
        return out.clone()  # outside inference mode: a normal tensor, which autograd may save

    def _raw_scores(self, model, tokenizer, max_length: int, prompts: list[Any], responses: list[Any]) -> torch.Tensor:
        """Unnormalised scores (B,) of one member, in input order.

        Decoder reward models forward each distinct prompt once for all its responses (layout.shared_prompt_layout:
        the G samples of a GRPO group, best-of-n's n candidates); the scores equal the padded rows' (tested).
        Encoders, which see the whole sequence bidirectionally, get length-sorted padded batches."""
        parts = [encode_scored_parts(tokenizer, p, r, max_length, self.truncation) for p, r in zip(prompts, responses)]
        out = torch.empty(len(parts), dtype=torch.float32)
        if is_last_token_model(model):
            from rlhfkit.models import layout

            packed = layout.use_packed(model, self.device)  # the GPU layout (layout.use_packed)
            order = sorted(range(len(parts)), key=lambda i: (parts[i][0], len(parts[i][1])))  # one prompt together
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                lay = layout.shared_prompt_layout([parts[i][0] for i in idx], [parts[i][1] for i in idx],
                                                    tokenizer.pad_token_id, packed)
                if packed:
                    h = layout.packed_hidden_states(model, lay.packed.with_needed(lay.last).to(self.device))
                    out[idx] = model.score(h).squeeze(-1).float().cpu()
                else:
                    out[idx] = layout_scores(model, lay.input_ids.to(self.device), lay.position_ids.to(self.device),
                                             lay.mask.to(self.device), lay.last.to(self.device)).cpu()
            return out
        seqs = [p + c for p, c in parts]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            ids, attn, _ = data_lib.pad_right([seqs[i] for i in idx], tokenizer.pad_token_id)
            out[idx] = forward_scores(model, ids.to(self.device), attn.to(self.device)).cpu()
        return out

    def member_scores(self, prompts: list[Any], responses: list[Any]) -> torch.Tensor:
        """Normalised scores of every member, (N members, B)."""
        return torch.stack([g * self.raw_scores(m, t, L, prompts, responses) + b for m, t, L, g, b in self.members])

    def __call__(self, prompts: list[Any], responses: list[Any]) -> dict[str, torch.Tensor]:
        _check_lengths(prompts, responses)
        if not prompts:
            return _empty(self.is_ensemble)
        s = self.member_scores(prompts, responses)  # (N, B)
        if not self.is_ensemble:
            return {"score": s[0]}
        return {"score": s.mean(0), "std": s.std(0, unbiased=False)}


# ----------------------------------------------------------------------------------------------- other sources
class HTTPReward:
    """A reward model served by `rlhfkit serve-rm`: POST {url}/score {"items": [{"prompt", "response"}]}."""

    def __init__(self, url: str, batch_size: int = 64, timeout: float = 300.0):
        self.url = url.rstrip("/")
        self.batch_size = batch_size
        self.timeout = timeout

    def _post(self, items: list[dict]) -> dict:
        body = json.dumps({"items": items}).encode()
        req = urllib.request.Request(self.url + "/score", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{self.url}/score: HTTP {e.code}: {e.read().decode(errors='replace')}") from None

    def __call__(self, prompts: list[Any], responses: list[str]) -> dict[str, torch.Tensor]:
        _check_lengths(prompts, responses)
        scores: list[float] = []
        stds: list[float] = []
        for s in range(0, len(prompts), self.batch_size):
            items = [{"prompt": p, "response": data_lib.completion_text(r)}
                     for p, r in zip(prompts[s : s + self.batch_size], responses[s : s + self.batch_size])]
            out = self._post(items)
            scores += out["scores"]
            if "std" in out:
                stds += out["std"]
        res = {"score": torch.tensor(scores, dtype=torch.float32)}
        if stds:
            res["std"] = torch.tensor(stds, dtype=torch.float32)
        return res


def accepts(fn: Callable, name: str) -> bool:
    """Whether fn can be called with the keyword `name` (a parameter of that name, or **kwargs)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY) for p in params)


def call_with_context(fn: Callable, prompts: list[Any], responses: list[Any], **context) -> Any:
    """fn(prompts, responses, **the context keywords fn accepts). Tool rollouts pass `episodes` and `rows`
    (rollout.episodes.tool_rollout); a reward written for (prompts, responses) alone is called exactly so."""
    return fn(prompts, responses, **{k: v for k, v in context.items() if accepts(fn, k)})


class FunctionReward:
    """A Python function f(prompts: list[str], responses: list[str]) -> list[float] (or a {"score": ...} dict);
    prompts are passed as the last user message text (`data.prompt_text`), responses as plain text. Context
    keywords (`episodes`, `rows` of tool rollouts) reach f when f accepts them (call_with_context)."""

    def __init__(self, fn: Callable[[list[str], list[str]], list[float]], name: str = ""):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")

    def __call__(self, prompts: list[Any], responses: list[Any], **context) -> dict[str, torch.Tensor]:
        _check_lengths(prompts, responses)
        vals = call_with_context(self.fn, [data_lib.prompt_text(p) for p in prompts],
                                 [data_lib.completion_text(r) for r in responses], **context)
        if isinstance(vals, dict):  # {"score": ..., other outputs}: logged as rollout/<key> by the trainers
            out = {k: torch.as_tensor(v, dtype=torch.float32).reshape(-1) for k, v in vals.items()}
            if out["score"].shape[0] != len(prompts):
                raise ValueError(f"reward function {self.name} returned {out['score'].shape[0]} values for "
                                 f"{len(prompts)} responses")
            return out
        vals = [float(v) for v in vals]
        if len(vals) != len(prompts):
            raise ValueError(f"reward function {self.name} returned {len(vals)} values for {len(prompts)} responses")
        return {"score": torch.tensor(vals, dtype=torch.float32)}


_FUNCTION_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_reward(spec: str, device: str | torch.device = "auto", batch_size: int = 64) -> RewardFn:
    """A reward-model directory, "http(s)://host:port" (serve-rm), or "package.module:function"."""
    if spec.startswith(("http://", "https://")):
        return HTTPReward(spec, batch_size)
    if Path(spec).is_dir():
        return RewardModel(spec, device, batch_size)
    if _FUNCTION_SPEC.match(spec):
        module, fn = spec.split(":")
        return FunctionReward(getattr(importlib.import_module(module), fn), spec)
    raise ValueError(f"reward {spec!r}: not a directory, an http:// URL or a 'package.module:function'")


class WeightedRewards:
    """A weighted sum of reward sources (multi-objective). Components are returned as score/<i> (and std/<i>).

    "std" of the sum, when any component has one, is sqrt(sum_i w_i^2 std_i^2): it assumes independent errors."""

    def __init__(self, fns: list[RewardFn], weights: list[float]):
        if len(fns) != len(weights):
            raise ValueError(f"{len(fns)} reward sources but {len(weights)} weights")
        self.fns, self.weights = fns, [float(w) for w in weights]

    def __call__(self, prompts: list[Any], responses: list[str], **context) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(prompts))
        var, has_std = torch.zeros(len(prompts)), False
        for i, (fn, w) in enumerate(zip(self.fns, self.weights)):
            r = call_with_context(fn, prompts, responses, **context)
            out[f"score/{i}"] = r["score"]
            total = total + w * r["score"]
            if "std" in r:
                out[f"std/{i}"] = r["std"]
                var, has_std = var + (w * r["std"]) ** 2, True
        out["score"] = total
        if has_std:
            out["std"] = var.sqrt()
        return out


def load_rewards(specs: list[str], weights: list[float] | None = None, device: str | torch.device = "auto",
                 batch_size: int = 64) -> RewardFn:
    """Weighted sum of several reward sources (weights default to 1 each)."""
    if not specs:
        raise ValueError("load_rewards: no reward specs given")
    return WeightedRewards([load_reward(s, device, batch_size) for s in specs], weights or [1.0] * len(specs))


def _check_lengths(prompts: list, responses: list) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


def _empty(ensemble: bool) -> dict[str, torch.Tensor]:
    out = {"score": torch.zeros(0)}
    if ensemble:
        out["std"] = torch.zeros(0)
    return out
