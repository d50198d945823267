"""Best-of-n gold on a finished demo run, from the pool of samples the demo's bon stage draws
(`demo.bon_candidates`: max(bon_n) = 16 per held-out prompt, seeded, so the same samples).

Two estimators of the gold of the proxy's choice:
- first-n: gold of the proxy's choice among the first n samples (what `rlhfkit demo` reports as bon_n);
- unbiased: the expected gold of the choice over all n-subsets of the N samples (`bon.expected_best_of_n`; lower
  variance for n < N, identical at n = N).

Besides the run's reward model ("proxy"), the same unbiased curve for other selectors on the same samples:
- "annotators": the demo annotators' mean *expected* utility (gold + their biases, `world.annotators.utility`),
  i.e. what a reward model that learnt the labelling process perfectly would score. If best-of-n by this selector
  keeps rising while the proxy's falls, the fall is the reward model's error, not the annotators' bias itself.
- "gold": the gold judge itself (the ceiling of best-of-n on this pool);
- "reward:DIR": any other reward-model directory given with --reward (e.g. one trained on more labels); for an
  ensemble also "reward-wco:DIR" (the members' minimum) and "reward-uwoL:DIR" (mean - L * variance across members,
  L = 0.5, 1, 2), the conservative aggregates of Coste et al. 2023;
- "sft_logprob" (with --sft-likelihood): the SFT model's own log-probability of the response, summed over its
  tokens (the text re-tokenised, EOS appended): whether the backbone the reward model starts from ranks correct
  answers higher at all.
The within-prompt correlation of each selector with every gold component (best-of-n only ever compares responses
to the same prompt), over all prompts and, with `helpful` and `total`, per prompt kind.

Usage: python scripts/bon_unbiased.py RUN_DIR [--reward DIR ...] [--sft-likelihood]
(prints one JSON line, appends it to exp/bon_unbiased.jsonl)
"""

import argparse
import json
import math
from pathlib import Path

import torch

from rlhfkit import data as data_lib
from rlhfkit import demo
from rlhfkit.algorithms.bon import expected_best_of_n
from rlhfkit.models.rewards import load_reward


def unbiased_curve(selector: torch.Tensor, g: torch.Tensor) -> tuple[dict, dict]:
    """Expected gold (and its standard error over prompts) of best-of-n by `selector`, for n = 1..N; both (P, N)."""
    mean, se = {}, {}
    for n in range(1, g.shape[1] + 1):
        per_prompt = expected_best_of_n(selector, g, n)
        mean[n], se[n] = per_prompt.mean().item(), (per_prompt.std() / math.sqrt(len(per_prompt))).item()
    return mean, se


def within_prompt_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Correlation of a and b after removing each prompt's mean (rows are prompts)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


def main(run: Path, rewards: list[str], sft_likelihood: bool = False) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    cfg = demo.Config(out=str(run), seed=summary["seed"], scale=summary["config"]["scale"],
                      bon_n=summary["config"]["bon_n"])
    pool = demo.bon_candidates(demo.Context(cfg))
    scores = pool["scores"].double()
    P, N = scores.shape
    prompts = [r["prompt"] for r in pool["prompts"] for _ in range(N)]
    comps, util = demo.judge_pool(pool["prompts"], pool["texts"], summary["config"].get("annotator_verbosity", 1.0))
    g, helpful = comps["total"], comps["helpful"]
    selectors = {"proxy": scores, "annotators": util, "gold": g}
    for d in rewards:
        rm = load_reward(d)
        if not getattr(rm, "is_ensemble", False):
            selectors[f"reward:{d}"] = rm(prompts, pool["texts"])["score"].double().view(P, N)
            continue
        # an ensemble (Coste et al. 2023): its mean, worst case (WCO: min over members) and uncertainty-weighted
        # score (UWO: mean - lambda * variance across members), each member normalised as the demo's proxy is
        members = rm.member_scores(prompts, pool["texts"]).double()  # (M, P*N)
        mean, var = members.mean(0), members.var(0, unbiased=False)
        selectors[f"reward:{d}"] = mean.view(P, N)
        selectors[f"reward-wco:{d}"] = members.min(0).values.view(P, N)
        for lam in (0.5, 1.0, 2.0):
            selectors[f"reward-uwo{lam}:{d}"] = (mean - lam * var).view(P, N)
    if sft_likelihood:
        from rlhfkit import models
        from rlhfkit.diagnostics.evaluate import sequence_logps

        tok = models.load_tokenizer(str(run / "sft"))
        sft = models.load_causal_lm(str(run / "sft"), tok)
        p_ids = [data_lib.encode_prompt(tok, p) for p in prompts]
        r_ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in pool["texts"]]
        selectors["sft_logprob"] = sequence_logps(sft, p_ids, r_ids, tok.pad_token_id).view(P, N)

    out = {"run": str(run), "pool": N, "first_n": {}, "unbiased": {}, "unbiased_se": {}, "by_kind": {}}
    for n in range(1, N + 1):
        out["first_n"][n] = g[torch.arange(P), scores[:, :n].argmax(1)].mean().item()
    out["unbiased"], out["unbiased_se"] = unbiased_curve(scores, g)  # keys kept from session 6's lines
    out["selectors"] = {name: unbiased_curve(sel, g)[0] for name, sel in selectors.items()}
    out["components"] = {name: {c: within_prompt_corr(sel, v) for c, v in comps.items()}
                         for name, sel in selectors.items() if name != "gold"}
    kinds = [r["kind"] for r in pool["prompts"]]
    for kind in sorted(set(kinds)):
        rows = torch.tensor([i for i, k in enumerate(kinds) if k == kind])
        out["by_kind"][kind] = {"prompts": len(rows)} | {
            name: {"corr_helpful": within_prompt_corr(sel[rows], helpful[rows]),
                   "corr_gold": within_prompt_corr(sel[rows], g[rows]),
                   "bo8": expected_best_of_n(sel[rows], g[rows], min(8, N)).mean().item(),
                   "bo16": expected_best_of_n(sel[rows], g[rows], N).mean().item()}
            for name, sel in selectors.items() if name != "gold"}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--reward", action="append", default=[], help="another reward-model directory to select with")
    ap.add_argument("--sft-likelihood", action="store_true", help="also select by the SFT model's log-probability")
    args = ap.parse_args()
    torch.set_num_threads(2)
    line = main(args.run, args.reward, args.sft_likelihood)
    print(json.dumps(line))
    Path("exp").mkdir(exist_ok=True)
    with open("exp/bon_unbiased.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
