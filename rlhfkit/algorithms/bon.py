"""`rlhfkit bon`: best-of-n sampling with a reward model, and optional rejection-sampling fine-tuning.

For each prompt, sample n responses from the policy, score them, keep the highest-scoring one. The best-of-n
policy's KL to the sampling policy has a closed form (Stiennon et al. 2020, appendix; Beirami et al. 2024 show it
is an upper bound, tight when the reward has no ties):

    KL(best-of-n || base) = log n - (n - 1) / n

reported next to the outputs, so best-of-n sits on the same gold-vs-KL plot as PPO and DPO (Rafailov et al. 2023,
Fig. 2). With `finetune`, the chosen responses become an SFT dataset (rejection sampling / "RAFT" / expert
iteration) trained as `rlhfkit sft` trains (algorithms/lm_step.py).

    from rlhfkit import bon
    bon.run(bon.Config(model="runs/sft", prompts="prompts.jsonl", reward_model=["runs/rm"], n=8))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit import config as config_lib
from rlhfkit import data as data_lib
from rlhfkit import models
from rlhfkit.rollout.generate import sample
from rlhfkit.algorithms.lm_step import FinetuneConfig, finetune
from rlhfkit.rollout.episodes import encode_prompts
from rlhfkit.rollout.score import load_reward_fn


@dataclass
class Config:
    model: str = ""
    """Policy to sample from: a local directory or hub id of any causal LM."""
    tokenizer: str = ""
    """Tokenizer (default: the model's)."""
    prompts: str = ""
    """Prompt file or hub id: rows with a `prompt` column; other columns are copied to the output."""
    split: str = "train"
    """Split for hub dataset ids."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Rename columns before use, e.g. question=prompt."""
    reward_model: list[str] = field(default_factory=list)
    """Reward sources, comma-separated: reward-model directory, http://127.0.0.1:PORT, or package.module:function."""
    reward_weights: list[float] = field(default_factory=list)
    """Weights of the reward sources (default: 1 each)."""
    n: int = 4
    """Samples per prompt; the best one (highest reward) is kept."""
    max_new_tokens: int = 64
    """Maximum tokens per sample."""
    temperature: float = 1.0
    """Sampling temperature (the analytic KL assumes sampling from the policy itself: keep 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0: off)."""
    max_prompt_length: int = 256
    """Prompts longer than this are cut from the left (counted)."""
    batch_size: int = 64
    """Samples per generation batch."""
    limit: int = 0
    """Use only the first N prompts (0: all)."""
    seed: int = 42
    """Sampling seed."""
    output_dir: str = "runs/bon"
    """Writes bon.jsonl (one best row per prompt), summary.json and config.yaml here."""
    finetune: bool = False
    """Rejection-sampling fine-tuning: SFT the model on the best-of-n responses (into output_dir/sft)."""
    finetune_steps: int = 0
    """SFT optimizer steps for finetune (0: one epoch)."""
    finetune_learning_rate: float = 1e-5
    """SFT learning rate for finetune."""
    trust_remote_code: bool = False
    """Allow model code from the hub."""

    def validate(self) -> None:
        if not self.model or not self.prompts:
            raise ValueError("model and prompts are required")
        if self.n < 1 or self.temperature <= 0:
            raise ValueError("n must be >= 1 and temperature > 0")


def analytic_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n nats (Stiennon et al. 2020; Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


def best_of(scores: torch.Tensor, n: int) -> torch.Tensor:
    """(P * n,) scores, the n samples of a prompt contiguous -> (P,) index (within the group) of the best one."""
    return scores.view(-1, n).argmax(dim=1)


def expected_best_of_n(selector: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """Per prompt, the expected value of best-of-n's choice when its n samples are drawn without replacement from
    the N in hand: (P, N) selector scores and (P, N) values -> (P,) float64.

    Sorted by the selector (best first), the i-th sample (0-based) is chosen exactly when it is drawn and none of
    the i better ones is, with probability C(N-1-i, n-1) / C(N, n) (Nakano et al. 2021, WebGPT appendix; Gao et
    al. 2022). This averages over all C(N, n) subsets, so it uses every sample and has less variance than one draw
    of n; at n = N it is the value of the selector's best. Ties in the selector go to the earlier sample."""
    P, N = selector.shape
    if not 1 <= n <= N:
        raise ValueError(f"n must be in [1, {N}], got {n}")
    order = torch.sort(selector, dim=1, descending=True, stable=True).indices
    chance = torch.tensor([math.comb(N - 1 - i, n - 1) for i in range(N)], dtype=torch.float64) / math.comb(N, n)
    return values.gather(1, order).double() @ chance


def run(cfg: Config) -> Path:
    cfg.validate()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_lib.save(cfg, out / "config.yaml")
    device = models.inference_device()
    tokenizer = models.load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
    model = models.load_causal_lm(cfg.model, tokenizer, cfg.trust_remote_code).to(device)
    reward = load_reward_fn(cfg.reward_model, cfg.reward_weights or None, device)
    rows = data_lib.load_rows(cfg.prompts, cfg.split, cfg.column_map)
    rows = rows[: cfg.limit] if cfg.limit else rows
    counter: dict = {}
    encoded = encode_prompts(tokenizer, [r["prompt"] for r in rows], cfg.max_prompt_length, counter)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    # 1. n samples per prompt, prompt-major, in batches of whole groups
    per_batch = max(1, cfg.batch_size // cfg.n)
    texts: list[str] = []
    lengths: list[int] = []
    finished: list[bool] = []
    scores = []
    for s0 in range(0, len(rows), per_batch):
        idx = [i for i in range(s0, min(s0 + per_batch, len(rows))) for _ in range(cfg.n)]
        smp = sample(model, [encoded[i] for i in idx], tokenizer.eos_token_id, tokenizer.pad_token_id,
                     cfg.max_new_tokens, cfg.temperature, 0, cfg.top_p, gen)
        batch_texts = smp.texts(tokenizer)
        # 2. score every sample
        scores.append(torch.as_tensor(reward([rows[i]["prompt"] for i in idx], batch_texts)["score"],
                                      dtype=torch.float32).reshape(-1).cpu())
        texts += batch_texts
        lengths += [len(r) for r in smp.response_ids]
        finished += smp.has_eos
    all_scores = torch.cat(scores)
    # 3. keep the best of each group
    best = best_of(all_scores, cfg.n)
    out_rows = []
    for p, row in enumerate(rows):
        j = p * cfg.n + int(best[p])
        group = all_scores[p * cfg.n:(p + 1) * cfg.n]
        r = dict(row)
        r.pop("completion", None)
        r.update(completion=data_lib.as_completion(row["prompt"], texts[j]), n=cfg.n, score=float(all_scores[j]),
                 mean_score=float(group.mean()), length=lengths[j], finished=finished[j])
        out_rows.append(r)
    data_lib.write_jsonl(out_rows, out / "bon.jsonl")
    summary = {"n": cfg.n, "prompts": len(rows), "kl_analytic": analytic_kl(cfg.n),
               "best_score": float(all_scores.view(-1, cfg.n).max(1).values.mean()),
               "sample_score": float(all_scores.mean()),
               "length": sum(r["length"] for r in out_rows) / max(1, len(out_rows)), "truncation": counter}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"bon: n={cfg.n} best {summary['best_score']:.4g} vs sample {summary['sample_score']:.4g}, "
          f"KL {summary['kl_analytic']:.4g} nats -> {out / 'bon.jsonl'}")
    # 4. optional rejection-sampling fine-tuning on the chosen responses
    if cfg.finetune:
        finetune(FinetuneConfig(model=cfg.model, tokenizer=cfg.tokenizer, data=str(out / "bon.jsonl"),
                                output_dir=str(out / "sft"), max_steps=cfg.finetune_steps,
                                learning_rate=cfg.finetune_learning_rate, seed=cfg.seed,
                                micro_batch_size=min(8, len(out_rows)), progress=False,
                                trust_remote_code=cfg.trust_remote_code))
    return out
