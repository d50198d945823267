"""`rlhfkit eval`: is the policy better, or only better at fooling the reward model?

For one or more policies (model directories, or files of pre-generated `prompt`, `completion` rows) and a prompt
set, this measures:
  - the reward under every judge given (reward models, reward functions, the world's gold judge and its
    components on world prompts), with the ensemble's disagreement when a judge reports one;
  - the win rate against a reference policy, with a 95% Wilson interval, ties counted half (metrics.win_rate);
  - the Monte-Carlo sequence KL to a reference model, in nats: the policy's own samples scored under both
    models at the sampling temperature (PITFALLS PPO #3, #7);
  - mean response length in tokens, distinct-n, self-BLEU (mode collapse), refusal rate;
  - a per-category breakdown (the world's prompt `kind`, or a user's `category` column).

  - with `--judge` (LLM-as-judge, Zheng et al. 2023): the win rate of each policy against the reference by a pairwise
    AI judge (`rlhfkit cai`'s judges: rule | hf | http), both presentation orders averaged, with its Wilson interval,
    the judge's position consistency and first-position preference, and its agreement with gold on the same pairs.

    rlhfkit eval --policies runs/sft,runs/ppo --prompts heldout.jsonl --judges rm=runs/rm \\
        --gold rlhfkit.world:gold_reward --reference sft --ref-model runs/sft --output eval.json
    rlhfkit eval --policies sft=runs/sft,runs/ppo_b0.01,runs/ppo_b0.1 --judges rm=runs/rm \\
        --gold rlhfkit.world:gold_reward --reference sft --ref-model runs/sft \\
        --output-dir runs/eval1          # also every sample, per policy: the KL explorer's input
    rlhfkit eval --policies sft=runs/sft,dpo=runs/dpo --reference sft --gold rlhfkit.world:gold_reward --judge rule
    OPENAI_API_KEY=... rlhfkit eval --policies ... --reference sft --judge http --base-url https://.../v1 \\
        --judge-model gpt-4o-mini --requests-per-second 5

With `--tools calculator --max-turns 4` model policies are sampled as multi-turn tool episodes, the judges score
their final answers, and tool_call_validity, calls_per_episode and task_success (a row's `answer`, or `--success
module:function`) are added (diagnostics/tool_eval.py).

The demo calls `evaluate_policy(model, tokenizer, rows, judges=...)` directly with already-loaded models.
Sampling: a fixed seed per call (the same prompts and the same random stream for every policy, so differences
are the policies', not the dice's); temperature 1 by default (temperature 0 = greedy; then no KL is reported,
because a Monte-Carlo KL needs samples from the policy itself).
"""

from __future__ import annotations

import importlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from rlhfkit import config as config_lib
from rlhfkit import data as data_lib
from rlhfkit.cai.options import JudgeConfig
from rlhfkit.data.tools import load_tool_rows
from rlhfkit.diagnostics import metrics as M

RewardFn = Callable[[list, list], Any]  # fn(prompts, responses) -> {"score": (B,) tensor, "std"?: (B,)}
WORLD_GOLD = "rlhfkit.world:gold_reward"


@dataclass
class Config(JudgeConfig):
    judge: str = ""  # type: ignore[assignment]
    """A pairwise AI judge for win rates against `reference` (LLM-as-judge): "rule" (the built-in world's
    rule-based constitutional judge), "hf" (a local causal LM at --judge-model) or "http" (an OpenAI-compatible
    endpoint at --base-url); empty: none. The judge options are those of `rlhfkit cai label`."""
    policies: list[str] = field(default_factory=list)
    """Policies to evaluate: model directories (sampled here) or JSONL/JSON files of `prompt`, `completion` rows
    (scored as they are). Name each as name=path, or the directory / file stem is the name."""
    prompts: str = ""
    """Prompt file or hub id with a `prompt` column (and optionally `kind` or `category`); required for model
    policies. Empty with the world gold judge: the default world's held-out prompts."""
    output: str = "eval.json"
    """JSON file the results are written to (with --output-dir: leave it at its default)."""
    output_dir: str = ""
    """A directory for the results instead of --output: OUTPUT_DIR/eval.json (the same JSON) and, for each policy,
    OUTPUT_DIR/eval/<policy>.json with every sample (not only n_samples_kept), in the demo's eval/<policy>.json
    format: the KL explorer of `rlhfkit label serve --runs-dir` reads this directory."""
    tokenizer: str = ""
    """Tokenizer (default: each policy's own; also used to count tokens of sample files)."""
    judges: dict[str, str] = field(default_factory=dict)
    """Judges as name=spec, spec = reward-model dir | http URL | module:function (rlhfkit.models.rewards.load_reward)."""
    gold: str = ""
    """A gold / held-out judge spec, reported as `gold` (rlhfkit.world:gold_reward adds gold components and
    style rates on world prompts)."""
    reference: str = ""
    """Name of the policy (among `policies`) that the others' win rate is measured against (by the first judge
    that is gold, else the first judge)."""
    ref_model: str = ""
    """Reference model directory for the Monte-Carlo sequence KL (e.g. the SFT model); empty: no KL."""
    max_new_tokens: int = 64
    """Maximum tokens generated per response."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy; then no KL)."""
    batch_size: int = 64
    """Prompts per generation / scoring batch."""
    limit: int = 0
    """Use only the first N prompts (0: all)."""
    split: str = "train"
    """Split for hub dataset ids."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Rename columns before use, e.g. question=prompt."""
    self_bleu_sample: int = 64
    """Responses scored for self-BLEU (each against all the others), drawn with the seed; 0: all of them."""
    n_samples_kept: int = 8
    """Sample responses per policy kept in the JSON (for the report)."""
    seed: int = 42
    """Sampling seed (the same for every policy)."""
    trust_remote_code: bool = False
    """Allow model code from the hub."""
    tools: list[str] = field(default_factory=list)
    """Sample model policies as multi-turn tool episodes with these tools (calculator, lookup=TABLE,
    package.module:function) and report tool_call_validity, calls_per_episode and task_success (tool_eval.py)."""
    max_turns: int = 4
    """Assistant turns per tool episode."""
    max_episode_tokens: int = 512
    """Token budget of a whole tool episode (prompt, turns, tool results)."""
    success: str = ""
    """Task success of a tool episode, package.module:function f(prompts, answers, *, episodes, rows) -> 0/1 each
    (default: the final answer states the row's `answer` column, when the rows have one)."""

    def validate(self) -> None:
        if not self.policies:
            raise ValueError("policies: give at least one model directory or sample file")
        if self.output_dir:
            if self.output != "eval.json":
                raise ValueError("give output (a file) or output_dir (a directory), not both")
            for spec in self.policies:  # each name becomes a file name: OUTPUT_DIR/eval/<name>.json
                name = _named(spec)[0]
                if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", name):
                    raise ValueError(f"policy name {name!r}: with output_dir, letters, digits, '_', '.', '-' only")
        if self.tools and (self.max_turns < 1 or self.max_episode_tokens <= self.max_new_tokens):
            raise ValueError("with tools: max_turns must be >= 1 and max_episode_tokens > max_new_tokens")
        if self.success and not self.tools:
            raise ValueError("success scores tool episodes: give tools too")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        if self.judge:
            self.validate_judge()
            if not self.reference:
                raise ValueError("--judge needs --reference: the policy the judge's win rates are measured against")


# ----------------------------------------------------------------------------------------------- judges
def load_judge(spec: str) -> RewardFn:
    """A judge from a spec via rlhfkit.models.rewards.load_reward; a plain `module:function` also works without it."""
    try:
        from rlhfkit.models.rewards import load_reward  # written alongside: RM dir | http URL | module:function
    except ImportError:
        load_reward = None
    if load_reward is not None:
        return load_reward(spec)
    if ":" not in spec or "/" in spec:
        raise ValueError(f"judge {spec!r}: only module:function is supported without rlhfkit.models.rewards")
    mod, fn = spec.split(":", 1)
    return getattr(importlib.import_module(mod), fn)


def call_judge(fn: RewardFn, prompts: list, responses: list[str]) -> tuple[list[float], list[float] | None]:
    """Scores (and ensemble std, when reported) of `responses` to `prompts` under one judge.

    A judge is called with the prompts as the rows hold them (strings or messages) and response texts. It may
    return {"score": (B,), "std"?: (B,)}, a tensor or a list. A plain function written for text prompts (like
    rlhfkit.world:gold_reward) is retried with the user-message text when it fails on messages.
    """
    try:
        out = fn(prompts, responses)
    except (TypeError, AttributeError, KeyError, ValueError):
        if not any(data_lib.is_conversational(p) for p in prompts):
            raise
        out = fn([data_lib.prompt_text(p) for p in prompts], responses)
    std = None
    if isinstance(out, dict):
        std = out.get("std")
        out = out["score"]
    scores = [float(x) for x in (out.flatten().tolist() if isinstance(out, torch.Tensor) else out)]
    if std is not None:
        std = [float(x) for x in (std.flatten().tolist() if isinstance(std, torch.Tensor) else std)]
    if len(scores) != len(responses):
        raise ValueError(f"judge returned {len(scores)} scores for {len(responses)} responses")
    return scores, std


def is_world_gold(spec_or_fn: Any) -> bool:
    if isinstance(spec_or_fn, str):
        return spec_or_fn.replace(".gold:", ":") == WORLD_GOLD
    from rlhfkit.world import gold_reward

    return spec_or_fn is gold_reward


@dataclass(frozen=True)
class Judge:
    """A gold / held-out judge: its reward function, and whether it is the world's gold judge (rlhfkit.world), which
    also reports per-component scores and bad-style rates on world prompts."""

    fn: RewardFn
    world: bool = False

    @classmethod
    def load(cls, spec: str) -> "Judge":
        """A judge from a spec (load_judge); the world's gold spec (WORLD_GOLD) gives the world's judge."""
        return cls(load_judge(spec), world=is_world_gold(spec))

    @classmethod
    def of(cls, judge: "Judge | str | RewardFn") -> "Judge":
        """A Judge from a Judge, a spec or a plain reward function."""
        if isinstance(judge, Judge):
            return judge
        if isinstance(judge, str):
            return cls.load(judge)
        return cls(judge, world=is_world_gold(judge))

    def __call__(self, prompts: list, responses: list[str]) -> Any:
        return self.fn(prompts, responses)


# ----------------------------------------------------------------------------------------------- models
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The causal LM inside DDP / TokenLogprobs wrappers."""
    while True:
        inner = getattr(model, "module", None) or (model.model if type(model).__name__ == "TokenLogprobs" else None)
        if inner is None:
            return model
        model = inner


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list, max_new_tokens: int, temperature: float, seed: int,
                     batch_size: int = 64, max_prompt_length: int = 512):
    """One response per prompt with a fixed-seed generator: (prompt_ids, response_ids, has_eos, texts).

    response_ids keep the EOS when the model emitted one (it is part of the sequence whose log-prob we score)."""
    from rlhfkit.rollout.generate import sample

    model = unwrap(model)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    enc = [data_lib.encode_prompt(tokenizer, p)[-max_prompt_length:] for p in prompts]
    p_ids, r_ids, eos = [], [], []
    for i in range(0, len(enc), batch_size):
        s = sample(model, enc[i : i + batch_size], tokenizer.eos_token_id, tokenizer.pad_token_id,
                   max_new_tokens, temperature, generator=gen)
        p_ids += s.prompt_ids
        r_ids += s.response_ids
        eos += s.has_eos
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in r_ids]
    return p_ids, r_ids, eos, texts


@torch.no_grad()
def sequence_logps(model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                   temperature: float = 1.0, batch_size: int = 64) -> torch.Tensor:
    """(B,) sum over response tokens of log p(token | prefix) at `temperature` (logps.TokenLogprobs).

    Each batch is forwarded as a packed layout (layout.rows_layout: sequences share rows, no padding between
    them), not as padded rows: the same log-probs up to fp32 rounding, ~30% faster on the demo's evaluation."""
    from rlhfkit.models.layout import rows_layout
    from rlhfkit.models.logps import TokenLogprobs

    lm = unwrap(model)
    was_training = lm.training
    lm.eval()
    scorer = TokenLogprobs(lm)
    device = next(lm.parameters()).device
    out = []
    for i in range(0, len(prompt_ids), batch_size):
        seqs = [p + r for p, r in zip(prompt_ids[i : i + batch_size], response_ids[i : i + batch_size])]
        masks = [[False] * len(p) + [True] * len(r)
                 for p, r in zip(prompt_ids[i : i + batch_size], response_ids[i : i + batch_size])]
        ids, attn, target = (x.to(device) for x in data_lib.pad_right(seqs, pad_id, masks))
        packable = bool(target.any(-1).all()) and not target[:, 0].any()  # every row: a prompt and a non-empty response
        lay = rows_layout(ids, target, pad_id) if packable else None
        lp = scorer(ids, attn, target, temperature, layout=lay)["logprobs"]  # (b, T-1)
        out.append(lp.sum(-1).double().cpu())
    if was_training:
        lm.train()
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def response_lengths(response_ids: list[list[int]], eos_id: int) -> list[int]:
    """Tokens per response, not counting the final EOS."""
    return [len(r) - (1 if r and r[-1] == eos_id else 0) for r in response_ids]


# ----------------------------------------------------------------------------------------------- evaluation
def _kind(row: dict, world: bool) -> str | None:
    k = row.get("kind", row.get("category"))
    if k is None and world:
        from rlhfkit.world import prompt_kind

        try:
            k = prompt_kind(data_lib.prompt_text(row["prompt"]))
        except Exception:  # not a world prompt
            k = None
    return None if k is None else str(k)


def _summary(values: list[float]) -> dict[str, float]:
    n = len(values)
    m = M.mean(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": m, "se": sd / math.sqrt(n) if n else 0.0}


def paired(samples_a: list[dict], samples_b: list[dict]) -> list[tuple[dict, dict]]:
    """The samples of A and B on the same prompts, paired in order of occurrence (the k-th sample of a prompt in A
    with the k-th of the same prompt in B)."""
    def keyed(samples):
        seen: dict[str, int] = {}
        out = {}
        for s in samples:
            j = seen[s["prompt"]] = seen.get(s["prompt"], -1) + 1
            out[(s["prompt"], j)] = s
        return out

    a, b = keyed(samples_a), keyed(samples_b)
    common = [k for k in a if k in b]
    if not common:
        raise ValueError("win rate: the two policies share no prompts")
    return [(a[k], b[k]) for k in common]


def win_rate_between(samples_a: list[dict], samples_b: list[dict], key: str = "gold") -> dict[str, float]:
    """Win rate of A over B on the judge `key`, pairing samples by prompt (in order of occurrence)."""
    pairs = paired(samples_a, samples_b)
    return M.win_rate([a["scores"][key] for a, _ in pairs], [b["scores"][key] for _, b in pairs])


def judge_win_rate(judge, samples_a: list[dict], samples_b: list[dict], swap: bool = True) -> dict[str, Any]:
    """Win rate of A over B by a pairwise AI judge (`rlhfkit.cai.judges.Judge`), paired by prompt.

    A pair is a win when the judge's P(a better), averaged over both presentation orders, is above 1/2, a tie
    (half a win) when it is exactly 1/2; the interval is Wilson's (metrics.win_rate). Also:
      mean_p             the mean P(a better), a softer win rate;
      consistency        the share of pairs with the same winner in both orders (swap only);
      first_position     the mean probability that the response shown first wins, over both orders (0.5: no
                         position preference; Zheng et al. 2023, Sec. 3.3);
      gold_agreement     where both samples carry a gold score that differs: the share of pairs where the judge's
                         winner is gold's (judge ties count half), and `gold_pairs`, how many such pairs.
    """
    pairs = paired(samples_a, samples_b)
    v = judge.compare_detailed([a["prompt"] for a, _ in pairs], [a["response"] for a, _ in pairs],
                               [b["response"] for _, b in pairs], swap=swap)
    out: dict[str, Any] = {**M.win_rate(v.p, [0.5] * len(v.p)), "judge": getattr(judge, "name", "judge"),
                           "mean_p": M.mean(v.p)}
    if swap:
        out["consistency"] = M.mean([float(c) for c in v.consistent])
        out["first_position"] = M.mean([*v.p_ab, *(1.0 - x for x in v.p_ba)])
    gold = [(p, a["scores"]["gold"] - b["scores"]["gold"]) for p, (a, b) in zip(v.p, pairs)
            if "gold" in a["scores"] and "gold" in b["scores"] and a["scores"]["gold"] != b["scores"]["gold"]]
    if gold:
        out["gold_agreement"] = M.mean([0.5 if p == 0.5 else float((p > 0.5) == (d > 0)) for p, d in gold])
        out["gold_pairs"] = len(gold)
    return out


def evaluate_texts(prompt_rows: list[dict], texts: list[str], lengths: list[int], *, judges: dict[str, RewardFn],
                   gold: Judge | str | RewardFn | None = None, proxy: str | None = None,
                   reference: dict | None = None, self_bleu_sample: int = 64, seed: int = 0) -> dict[str, Any]:
    """Every statistic that needs only the responses (not the model). See `evaluate_policy` for the keys."""
    gold = None if gold is None else Judge.of(gold)
    world = gold is not None and gold.world
    if gold is not None and not world:  # any other gold judge is scored like the named ones, as "gold"
        judges = {**judges, "gold": gold.fn}
    prompts = [r["prompt"] for r in prompt_rows]
    kinds = [_kind(r, world) for r in prompt_rows]
    ptexts = [data_lib.prompt_text(p) for p in prompts]
    per: list[dict] = [{"prompt": pt, "response": t, "kind": k, "length": L, "scores": {}}
                       for pt, t, k, L in zip(ptexts, texts, kinds, lengths)]
    res: dict[str, Any] = {"n": len(texts), "judges": {}}
    # 1. judges (reward models, functions); the ensemble's std is its disagreement
    for name, fn in judges.items():
        scores, std = call_judge(fn, prompts, texts)
        res["judges"][name] = _summary(scores)
        if std is not None:
            res["judges"][name]["disagreement"] = M.mean(std)
        for s, v in zip(per, scores):
            s["scores"][name] = v
    # 2. the world's gold judge, its components and the bad-style rates
    if world:
        from rlhfkit.world import COMPONENTS, gold, style_rates

        comps = [gold(pt, t) for pt, t in zip(ptexts, texts)]
        for s, g in zip(per, comps):
            s["scores"]["gold"] = g["total"]
            s["gold_components"] = {c: g[c] for c in COMPONENTS}
        res["gold"] = M.mean([g["total"] for g in comps])
        res["gold_se"] = _summary([g["total"] for g in comps])["se"]
        res["gold_components"] = {c: M.mean([g[c] for g in comps]) for c in COMPONENTS}
        res["style_rates"] = style_rates(ptexts, texts)
    elif "gold" in judges:
        res["gold"] = res["judges"]["gold"]["mean"]
        res["gold_se"] = res["judges"]["gold"]["se"]
    proxy_names = [proxy] if proxy else [n for n in judges if n != "gold"][:1]
    if proxy_names and proxy_names[0] in res["judges"]:
        res["proxy"] = res["judges"][proxy_names[0]]["mean"]
        if "disagreement" in res["judges"][proxy_names[0]]:
            res["disagreement"] = res["judges"][proxy_names[0]]["disagreement"]
    # 3. length and diversity
    res["mean_length"] = M.mean(lengths)
    res["distinct_1"] = M.distinct_n(texts, 1)
    res["distinct_2"] = M.distinct_n(texts, 2)
    res["self_bleu"] = M.self_bleu(texts, 4, sample=self_bleu_sample, seed=seed)
    res["refusal_rate"] = M.refusal_rate(texts)
    # 4. win rate against reference policies (on gold when there is one, else on the first judge)
    has_gold = bool(per) and "gold" in per[0]["scores"]
    win_key = "gold" if has_gold else next(iter(judges), None)
    res["win_rate_judge"] = win_key
    for name, ref in (reference or {}).items():
        ref_samples = ref["samples"] if isinstance(ref, dict) else ref
        if win_key is not None:
            res[f"win_rate_vs_{name}"] = win_rate_between(per, ref_samples, win_key)
    # 5. per-category breakdown
    by_kind: dict[str, dict] = {}
    for k in sorted({k for k in kinds if k is not None}):
        rows = [s for s in per if s["kind"] == k]
        entry: dict[str, Any] = {"n": len(rows), "mean_length": M.mean([s["length"] for s in rows]),
                                 "refusal_rate": M.refusal_rate([s["response"] for s in rows])}
        for name in rows[0]["scores"]:
            entry[name] = M.mean([s["scores"][name] for s in rows])
        by_kind[k] = entry
    res["by_kind"] = by_kind
    res["samples"] = per
    return res


def evaluate_policy(policy_model, tokenizer, prompt_rows: list[dict], *, judges: dict[str, RewardFn] | None = None,
                    reference: dict | None = None, ref_model=None, ref_name: str = "sft", max_new_tokens: int = 64,
                    temperature: float = 1.0, seed: int = 42, gold: Judge | str | RewardFn | None = None,
                    proxy: str | None = None, batch_size: int = 64, self_bleu_sample: int = 64) -> dict[str, Any]:
    """Sample `policy_model` on `prompt_rows` (fixed seed) and measure it. `gold`: a gold / held-out Judge (or a
    spec or function, Judge.of); the world's gold judge adds components and style rates on world prompts. Returns:

      gold, gold_se                                 (with a gold judge)
      gold_components, style_rates                  (the world's gold judge on world prompts)
      judges: {name: {mean, se, disagreement?}}; proxy (the `proxy` judge, default the first one that is not
      "gold"), disagreement (its ensemble std)
      win_rate_vs_<name>: {mean, low, high, wins, ties, losses, n} for each `reference` (name -> samples, or an
      earlier result of this function), on gold when there is one, else on the first judge
      kl_to_<ref_name>, kl_se, kl_k3: Monte-Carlo sequence KL to `ref_model` in nats (temperature > 0 only)
      mean_length (tokens, EOS not counted), distinct_1, distinct_2, self_bleu, refusal_rate
      by_kind: {kind: {n, mean_length, refusal_rate, <judge>...}}; samples: [{prompt, response, kind, length,
      scores, gold_components?}] (prompt = user-message text)
    """
    t0 = time.perf_counter()
    prompts = [r["prompt"] for r in prompt_rows]
    p_ids, r_ids, eos, texts = sample_responses(policy_model, tokenizer, prompts, max_new_tokens, temperature, seed,
                                                batch_size)
    lengths = response_lengths(r_ids, tokenizer.eos_token_id)
    res = evaluate_texts(prompt_rows, texts, lengths, judges=judges or {}, gold=gold, proxy=proxy,
                         reference=reference, self_bleu_sample=self_bleu_sample, seed=seed)
    res["finished_rate"] = M.mean([float(e) for e in eos])
    if ref_model is not None and temperature > 0:
        lp = sequence_logps(policy_model, p_ids, r_ids, tokenizer.pad_token_id, temperature, batch_size)
        # the reference policy scored against itself (SFT in the demo): the same forward, so skip it; KL = 0
        lr = lp if ref_model is policy_model else sequence_logps(ref_model, p_ids, r_ids, tokenizer.pad_token_id,
                                                                 temperature, batch_size)
        kl = M.mc_sequence_kl(lp, lr)
        res[f"kl_to_{ref_name}"] = kl["kl"]
        res.update(kl_se=kl["se"], kl_k3=kl["k3"], kl_k3_se=kl["k3_se"])
        for s, a, b in zip(res["samples"], lp.tolist(), lr.tolist()):
            s["logp"], s["ref_logp"] = a, b
    res["seconds"] = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------------------------- command
def _named(spec: str) -> tuple[str, str]:
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name, path
    p = Path(spec)
    return (p.stem if p.is_file() else p.name), spec


def _load_sample_file(path: str) -> list[dict]:
    p = Path(path)
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        return data if isinstance(data, list) else data["samples"]
    return data_lib.read_jsonl(p)


def run(cfg: Config) -> dict[str, Any]:
    """Evaluate every policy; writes cfg.output (JSON), or OUTPUT_DIR/eval.json and OUTPUT_DIR/eval/<policy>.json,
    and returns the same dict."""
    from rlhfkit import models

    cfg.validate()
    torch.manual_seed(cfg.seed)
    judges: dict[str, RewardFn] = {name: load_judge(spec) for name, spec in cfg.judges.items()}
    gold = Judge.load(cfg.gold) if cfg.gold else None
    named = [_named(s) for s in cfg.policies]
    rows: list[dict] = []
    if cfg.prompts:
        rows = (load_tool_rows if cfg.tools else data_lib.load_rows)(cfg.prompts, cfg.split, cfg.column_map)
    elif gold is not None and gold.world:
        from rlhfkit.world import WorldConfig, heldout_prompts

        rows = heldout_prompts(WorldConfig())  # the default world's held-out split
    elif any(Path(p).is_dir() for _, p in named):
        raise ValueError("prompts: required to sample model policies")
    if cfg.limit:
        rows = rows[: cfg.limit]
    tok_cache: dict[str, Any] = {}

    def tokenizer_for(path: str):
        key = cfg.tokenizer or path
        if key not in tok_cache:
            tok_cache[key] = models.load_tokenizer(key, cfg.trust_remote_code)
        return tok_cache[key]

    ref_model = None
    results: dict[str, dict] = {}
    from rlhfkit.diagnostics import tool_eval

    runner = tool_eval.runner(cfg.tools) if cfg.tools else None  # tool episodes: closed at the end
    success = tool_eval.load_success(cfg.success) if cfg.success else None
    for name, path in named:
        if Path(path).is_dir():
            tok = tokenizer_for(path)
            model = models.load_causal_lm(path, tok, cfg.trust_remote_code).to(models.inference_device())
            if cfg.ref_model and ref_model is None:
                ref_model = models.load_causal_lm(cfg.ref_model, tok, cfg.trust_remote_code).to(model.device)
            if runner is not None:
                res = tool_eval.evaluate_tool_policy(model, tok, rows, runner, max_turns=cfg.max_turns,
                                                     max_tokens=cfg.max_episode_tokens,
                                                     max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                                     seed=cfg.seed, batch_size=cfg.batch_size, success=success,
                                                     ref_model=ref_model, judges=judges, gold=gold,
                                                     self_bleu_sample=cfg.self_bleu_sample)
            else:
                res = evaluate_policy(model, tok, rows, judges=judges, ref_model=ref_model, ref_name="ref",
                                      max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed,
                                      gold=gold, batch_size=cfg.batch_size, self_bleu_sample=cfg.self_bleu_sample)
            res["length_unit"] = "tokens"
        else:  # pre-generated samples: scored as they are; no KL (there is no policy to score them under)
            srows = _load_sample_file(path)
            if cfg.limit:
                srows = srows[: cfg.limit]
            texts = [data_lib.completion_text(r["completion"]) for r in srows]
            if cfg.tokenizer:
                tok = tokenizer_for(cfg.tokenizer)
                lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
            else:
                lengths = [len(t.split()) for t in texts]
            res = evaluate_texts(srows, texts, lengths, judges=judges, gold=gold,
                                 self_bleu_sample=cfg.self_bleu_sample, seed=cfg.seed)
            res["length_unit"] = "tokens" if cfg.tokenizer else "words"
        res["source"] = path
        if Path(path).is_dir():  # where the policy's run lives (config.yaml, alarms), wherever eval ran from
            res["source_dir"] = str(Path(path).resolve())
        results[name] = res
        line = ", ".join(f"{k} {res[k]:.3f}" for k in ("gold", "proxy", "kl_to_ref", "mean_length", "task_success",
                                                       "tool_call_validity", "calls_per_episode") if k in res)
        print(f"eval: {name}: {line}")
    # win rates against the reference policy, paired by prompt
    if cfg.reference:
        if cfg.reference not in results:
            raise ValueError(f"reference: {cfg.reference!r} is not one of the policies {list(results)}")
        ref = results[cfg.reference]
        for name, res in results.items():
            key = res.get("win_rate_judge")
            if name != cfg.reference and key is not None:
                res[f"win_rate_vs_{cfg.reference}"] = win_rate_between(res["samples"], ref["samples"], key)
                wr = res[f"win_rate_vs_{cfg.reference}"]
                print(f"eval: {name} vs {cfg.reference}: win rate {wr['mean']:.3f} "
                      f"[{wr['low']:.3f}, {wr['high']:.3f}] on {key}")
    if runner is not None:
        runner.close()
    if cfg.judge:  # LLM-as-judge win rates against the reference, beside the gold and reward-model ones
        from rlhfkit.cai.options import build_judge

        judge = build_judge(cfg, default_cache=str(Path(cfg.output).with_suffix(".judge-cache.jsonl")))
        ref = results[cfg.reference]
        for name, res in results.items():
            if name != cfg.reference:
                wr = res[f"judge_win_rate_vs_{cfg.reference}"] = judge_win_rate(judge, res["samples"],
                                                                                ref["samples"], cfg.swap)
                extra = f", consistency {wr['consistency']:.3f}" if "consistency" in wr else ""
                print(f"eval: {name} vs {cfg.reference}: judge ({cfg.judge}) win rate {wr['mean']:.3f} "
                      f"[{wr['low']:.3f}, {wr['high']:.3f}]{extra}")
    if cfg.output_dir:  # every sample, one file per policy, before eval.json keeps only the first few
        per_policy = Path(cfg.output_dir) / "eval"
        per_policy.mkdir(parents=True, exist_ok=True)
        for name, res in results.items():
            (per_policy / f"{name}.json").write_text(json.dumps(res, default=str))
    for res in results.values():
        res["samples"] = res["samples"][: cfg.n_samples_kept]
    out = {"config": config_lib.to_dict(cfg), "policies": results}
    path = Path(cfg.output_dir) / "eval.json" if cfg.output_dir else Path(cfg.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"eval: -> {path}")
    return out
