"""GRPO, DAPO, GSPO and REINFORCE++ on the built-in world with its verifiable reward, several seeds each.

Needs the SFT policy and the world's prompt files of a finished `rlhfkit demo --stop-after eval_sft` (R=runs/demo).
Each run trains on the world's RL prompts with rlhfkit.world:correct_reward (1 when the response shows the ideal
behaviour, 0 otherwise), and the monitor samples the held-out prompts every `every` steps (fixed seed,
temperature 1) and scores them with the same reward (`proxy`: the held-out correct rate) and with the world's gold
judge (`gold`). Entropy is the trainer's `policy/entropy` (mean token entropy on its own samples).

    nice -n 19 .venv/bin/python scripts/online_family_world.py --steps 200 --every 25 --seeds 0 1 2 [--runs DIR]
    nice -n 19 .venv/bin/python scripts/online_family_world.py --summarise-only   # tables from finished runs

Prints one markdown table per metric: mean over seeds and a 95% t-interval (t with n-1 degrees of freedom; with
3 seeds t = 4.30, so the intervals are wide) at every evaluation step, and writes the per-run numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

# The variants as their papers run them (docs/ppo.md): the recipes differ in the KL term too (DAPO and GSPO drop it).
COMMON = dict(num_generations=8, rollout_batch_size=8, num_minibatches=2, micro_batch_size=32,
              gradient_accumulation_steps=1, learning_rate=1e-4, lr_scheduler="constant", max_new_tokens=48,
              threads=1, progress=False)
VARIANTS = {
    "grpo": ("grpo", dict(kl_coef=0.04)),
    "dapo": ("grpo", dict(kl_coef=0.0, epsilon_low=0.2, epsilon_high=0.28, dynamic_sampling=True, overlong_buffer=12,
                          mask_truncated_completions=True, aggregation="token_mean")),
    "gspo": ("grpo", dict(kl_coef=0.0, importance_sampling_level="sequence", epsilon_low=3e-4, epsilon_high=4e-4,
                          aggregation="seq_mean")),
    "reinforce_pp": ("reinforce_pp", dict(kl_coef=0.04)),
}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def run_one(variant: str, seed: int, steps: int, every: int, R: Path, runs: Path, monitor_n: int) -> Path:
    from rlhfkit import grpo, reinforce_pp

    module, flags = VARIANTS[variant]
    out = runs / f"{variant}-s{seed}"  # steps + 2: one more rollout, so step `steps` is evaluated and has an entropy
    if (out / "model.safetensors").exists():
        return out
    mod = grpo if module == "grpo" else reinforce_pp
    cfg = mod.Config(model=str(R / "sft"), data=str(R / "world" / "train_prompts.jsonl"),
                     reward_model=["rlhfkit.world:correct_reward"], output_dir=str(out), max_steps=steps + 2, seed=seed,
                     monitor_prompts=str(R / "world" / "heldout_prompts.jsonl"), monitor_every=every,
                     monitor_gold="rlhfkit.world:gold_reward", monitor_n=monitor_n, **COMMON, **flags)
    mod.train(cfg)
    return out


def curves(out: Path) -> dict:
    """{step: {gold, correct, entropy, length}} at the monitor's evaluation steps. The evaluation at loop step s
    sees the policy after s optimizer steps; the entropy of that same policy is the policy/entropy the trainer logs
    for step s + 1 (its forward before the (s+1)-th update)."""
    metrics = {m["step"]: m for m in (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
                                      if x.strip())}
    monitor = [json.loads(x) for x in (out / "monitor.jsonl").read_text().splitlines() if x.strip()]
    res: dict = {}
    for rec in monitor:
        s = rec["step"]
        if s + 1 in metrics:
            res[s] = {"gold": rec["gold"], "correct": rec["proxy"], "length": rec["length"],
                      "entropy": metrics[s + 1]["policy/entropy"]}
    extra = [m.get("rollout/extra_generations", 0.0) for m in metrics.values()]
    res["extra_generations"] = sum(extra)
    return res


def interval(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, T975[n - 1] * sd / math.sqrt(n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--R", default=os.environ.get("R", "runs/demo"))
    ap.add_argument("--runs", default="runs/family")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--monitor-n", type=int, default=256, help="held-out prompts per evaluation")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--summarise-only", action="store_true")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    R, runs = Path(a.R), Path(a.runs)
    data: dict = {}
    for v in a.variants:
        for s in a.seeds:
            out = runs / f"{v}-s{s}"
            if not a.summarise_only:
                run_one(v, s, a.steps, a.every, R, runs, a.monitor_n)
            if (out / "monitor.jsonl").exists():
                data.setdefault(v, {})[s] = curves(out)
    if a.json:
        Path(a.json).write_text(json.dumps(data, indent=1))
    for key, what in (("gold", "held-out gold (world judge)"), ("correct", "held-out correct rate (the reward)"),
                      ("entropy", "policy entropy, nats/token (training samples)")):
        steps = sorted({st for v in data.values() for c in v.values() for st in c if isinstance(st, int)})
        print(f"\n{what}: mean over seeds +- 95% t-interval half-width\n")
        print("| variant | " + " | ".join(f"step {st}" for st in steps) + " |")
        print("|---|" + "---|" * len(steps))
        for v, per_seed in data.items():
            cells = []
            for st in steps:
                xs = [c[st][key] for c in per_seed.values() if st in c]
                m, h = interval(xs) if xs else (float("nan"), float("nan"))
                cells.append(f"{m:.3f} +- {h:.3f} (n={len(xs)})")
            print(f"| {v} | " + " | ".join(cells) + " |")
    print("\nextra generations (dynamic sampling), per run:",
          {v: [c["extra_generations"] for c in per_seed.values()] for v, per_seed in data.items()})


if __name__ == "__main__":
    main()
