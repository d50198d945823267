"""`rlhfkit loop`: iterative RLHF in rounds, the collect-retrain-optimise cycle of InstructGPT and Llama 2.

A policy optimised against a reward model drifts off the samples that reward model learnt from, and there its
judgement is worst; so each round labels the current policy's own outputs again and retrains the reward model:

    round k, from policy pi_(k-1) (the start policy, usually SFT, in round 1):
      1 sample    K responses per prompt from pi_(k-1), on a seeded subset of the prompts   (`rlhfkit sample`)
      2 labels    the world's simulated annotators (`label_source world`), or people in the labelling app
                  (`app`): the round's candidates become items in its database and the loop waits for `quota`
                  labels on them. A seeded `heldout_fraction` of the round's prompts is held out of step 3
      3 reward    a reward model on every label so far except this round's held-out prompts: retrained from the
                  start policy (`rm_mode retrain`) or continued from the last round's (`continue`). The last
                  round's and the new reward model are both measured on the held-out prompts' pairs of pi_(k-1)'s
                  samples, ordered by the gold judge where there is one and by the labels: `before`, `after`,
                  their paired change with an interval over prompts (and, with `rm_replicas`, over reward models
                  trained on the same labels with other seeds), and how often the labels agree with gold.
                  On the world the same is measured again on `measure_prompts` of the held-out evaluation prompts,
                  K samples of pi_(k-1) each, labelled by the simulated annotators (free there) and never trained on
      4 policy    PPO against the new reward model, or DPO on the round's labels, from pi_(k-1) -> pi_k; the KL is
                  to the start policy (`kl_reference start`) or to pi_(k-1) (`current`)
      5 evaluate  pi_k on the held-out prompts: gold with its 95% interval, win rate against the start policy,
                  KL to it, proxy reward, length (round_0 holds the start policy's evaluation)
      6 record    round_k/{prompts,samples,labels,rm_data}.jsonl (measure_{prompts,samples}.jsonl), rm/,
                  policy/, eval.json, then metrics.json

    rlhfkit loop --world --rounds 3 --seed 0 --output-dir runs/loop-0    # base and SFT from the demo's stages
    rlhfkit loop --model runs/sft --prompts prompts.jsonl --label-source app --app-db labels.sqlite --quota 200

A round is finished when its metrics.json exists. Rerun with the same output directory and the loop resumes at the
first unfinished round, which is redone from its start (seeded, so it gives the same results); a larger `rounds`
continues a finished loop; other settings are refused (loop_state.json holds them). summary.json has every
round's metrics and the comparisons (gold of the last round against round 1, paired over prompts);
loop_report.html draws them by round.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from rlhfkit import config as config_lib

# Per scale: prompts per round, K and PPO iterations per round (half the demo's 40 at a moderate KL coefficient:
# three rounds then train 60 in all, and a round takes about two minutes on 2 uncontended cores); every other
# training setting is the demo's at the same scale (demo.SCALES)
# `measure_prompts`: the world's simulated labels cost nothing, so step 3 also measures the reward models on K
# samples of the current policy for that many of the world's held-out prompts: the round's held-out quarter alone
# gives 40-280 pairs a round, whose intervals (+-0.07-0.15) hide a change of a few points
SIZES: dict[str, dict[str, int]] = {"default": {"prompts_per_round": 256, "num_responses": 4, "ppo_iterations": 20,
                                                "measure_prompts": 256},
                                    "toy": {"prompts_per_round": 16, "num_responses": 3, "ppo_iterations": 2,
                                            "measure_prompts": 4}}
CHOICES = {"label_source": ("world", "app"), "rm_mode": ("retrain", "continue"), "algorithm": ("ppo", "dpo"),
           "kl_reference": ("start", "current")}
# settings a resumed loop may change: how many rounds, and how it waits for people
VOLATILE = ("rounds", "poll_seconds", "timeout_seconds")


@dataclass
class Config:
    FLAGS = {"out": "--output-dir"}  # the command line's name for a destination directory (--out: alias)

    out: str = "runs/loop"
    """Output directory: round_0 .. round_N, loop_state.json, summary.json, loop_report.html."""
    rounds: int = 3
    """Rounds to run (a finished loop given more continues from its last round)."""
    seed: int = 0
    """Seed of everything (world, prompt subsets, sampling, labels, training)."""
    world: bool = False
    """Run on the built-in world: the start policy is the demo's SFT stage (built, or reused, in OUT/demo with the
    demo's stages), the prompts are its world's, step 5 judges with its gold judge."""
    scale: str = "default"
    """Sizes: default (a few minutes per round on 2 CPU cores) or toy (seconds; for tests). Training settings
    are the demo's at this scale."""
    model: str = ""
    """Start policy (e.g. an SFT model directory); also the reward model's initialisation. Not with --world."""
    prompts: str = ""
    """Prompt file sampled each round (a subset) and PPO's training prompts. Not with --world."""
    eval_prompts: str = ""
    """Held-out prompts for step 5 (--world: the world's held-out prompts; empty elsewhere: no step 5)."""
    gold: str = ""
    """Gold judge, package.module:function, for step 5 and for ordering the held-out pairs of step 3 (--world: the
    world's gold judge; empty elsewhere: step 5 reports the proxy reward and step 3 uses the labels)."""
    prompts_per_round: int = 0
    """Prompts sampled per round (0: the scale's, 256 by default)."""
    num_responses: int = 0
    """K responses per prompt (0: the scale's, 4 by default); the annotators rank them into K(K-1)/2 pairs."""
    heldout_fraction: float = 0.25
    """Fraction of each round's prompts whose pairs measure the reward models instead of training them."""
    measure_prompts: int = -1
    """label_source world: held-out prompts (of eval_prompts, never trained on) whose K samples of the current
    policy, labelled by the simulated annotators, also measure the reward models in step 3 (-1: the scale's, 256 by
    default; 0: none). People's labels are not spent on this: with the app only the round's held-out prompts count."""
    label_source: str = "world"
    """world: the built-in world's simulated annotators (world prompts only); app: people in the labelling app."""
    annotator_verbosity: float = 0.5
    """label_source world: scale of the annotators' length bias (the demo's default)."""
    app_db: str = ""
    """label_source app: the labelling app's database (`rlhfkit label serve --db`): a SQLite file or Postgres URL."""
    quota: int = 0
    """label_source app: labels a round waits for (0: one per item, i.e. prompts_per_round)."""
    poll_seconds: float = 10.0
    """label_source app: seconds between counts of the round's labels."""
    timeout_seconds: float = 3600.0
    """label_source app: give up waiting after this long (the items stay; rerun to resume the round)."""
    rm_mode: str = "retrain"
    """retrain: every round's reward model starts from the start policy; continue: from the last round's."""
    rm_ensemble: int = 1
    """Reward models per round (seeds seed+i, in rm/member-i), scored by their mean: PPO's reward, step 3's before and
    after. One small model's training seed moves its accuracy by ~0.1; an ensemble averages that out (Coste et al.
    2023, "Reward Model Ensembles Help Mitigate Overoptimization"). PPO's critic starts from member-0."""
    rm_replicas: int = 0
    """Reward models per round trained only to measure step 3: the same labels and settings, other seeds
    (`round_k/rm_replicas/replica-i`; the round's own reward model is the first). "before" and "after" are then
    their mean accuracy, and the change's interval resamples the replicas as well as the prompts: one small reward
    model's training seed alone moves its accuracy on the newest policy's samples by up to ~0.2 (docs/loop.md), so
    one model a side measures a draw, not what retraining does. 0: 3 with --world, 1 (no extra) elsewhere, where
    each replica costs a reward model's training."""
    algorithm: str = "ppo"
    """ppo: PPO against the round's reward model; dpo: DPO on the round's labels."""
    kl_coef: float = 0.1
    """KL coefficient: PPO's beta, DPO's beta."""
    kl_reference: str = "start"
    """The policy the KL is measured to in step 4: the start policy, or the current one (pi_(k-1))."""
    policy_steps: int = 0
    """PPO iterations or DPO epochs per round (0: the scale's, 20 and 3 by default)."""
    threads: int = 2
    """torch CPU threads."""

    def validate(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.scale not in SIZES:
            raise ValueError(f"scale: {self.scale!r} is not one of {', '.join(SIZES)}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.world and (self.model or self.prompts):
            raise ValueError("--world builds its own start policy and prompts (OUT/demo): leave model and prompts "
                             "empty, or drop --world to loop on your own")
        if not self.world and not (self.model and self.prompts):
            raise ValueError("model and prompts are required (or --world for the built-in world)")
        if self.label_source == "app" and not self.app_db:
            raise ValueError("label_source app needs app_db: the labelling app's database (rlhfkit label serve --db)")
        if self.label_source == "world" and not self.world:
            raise ValueError("label_source world labels with the built-in world's simulated annotators, which need "
                             "--world; with your own model and prompts use --label-source app")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.measure_prompts < -1:
            raise ValueError(f"measure_prompts must be -1 (the scale's), 0 (none) or more, "
                             f"got {self.measure_prompts}")
        if self.num_responses == 1 or min(self.num_responses, self.prompts_per_round, self.quota,
                                          self.policy_steps) < 0:
            raise ValueError("num_responses must be 0 or >= 2; prompts_per_round, quota and policy_steps >= 0")
        if self.poll_seconds <= 0 or self.timeout_seconds <= 0:
            raise ValueError("poll_seconds and timeout_seconds must be > 0")
        if self.kl_coef <= 0:
            raise ValueError(f"kl_coef must be > 0, got {self.kl_coef}")
        if self.rm_replicas < 0:
            raise ValueError(f"rm_replicas must be >= 0 (0: 3 with --world, else 1), got {self.rm_replicas}")
        if self.rm_ensemble < 1:
            raise ValueError(f"rm_ensemble must be >= 1, got {self.rm_ensemble}")
        if self.rm_ensemble > 1 and self.rm_mode == "continue":
            raise ValueError("rm_mode continue starts from the last round's single reward model; with rm_ensemble > 1 "
                             "use rm_mode retrain")


class Start(NamedTuple):
    """What every round reads: the start policy, the prompt files, the gold judge's spec ("" for none)."""

    model: str
    prompts: str
    eval_prompts: str
    gold: str


def sizes(cfg: Config) -> dict[str, Any]:
    """The demo's settings at the scale, with the loop's per-round sizes (the config's where set)."""
    from rlhfkit import demo

    s = {**demo.SCALES[cfg.scale], **SIZES[cfg.scale]}
    for k in ("prompts_per_round", "num_responses"):
        s[k] = getattr(cfg, k) or s[k]
    s["measure_prompts"] = 0 if cfg.label_source != "world" else (
        s["measure_prompts"] if cfg.measure_prompts < 0 else cfg.measure_prompts)
    s["policy_steps"] = cfg.policy_steps or (s["ppo_iterations"] if cfg.algorithm == "ppo" else s["dpo_epochs"])
    return s


def replicas(cfg: Config) -> int:
    """Reward models measured a side in step 3 (`rm_replicas`, 0: 3 on the world, where training is cheap)."""
    return cfg.rm_replicas or (3 if cfg.world else 1)


def replica_dirs(rm_dir: str) -> list[str]:
    """A round's reward model and the replicas trained beside it (rm_replicas/replica-1 ..), those that exist."""
    more = sorted((Path(rm_dir).parent / "rm_replicas").glob("replica-*"), key=lambda p: int(p.name.split("-")[1]))
    return [rm_dir, *map(str, more)]


def prepare(cfg: Config) -> Start:
    """The start policy and prompts: the user's, or on the world the demo's stages up to SFT in OUT/demo (reused
    when they are finished there with the same settings)."""
    if not cfg.world:
        return Start(cfg.model, cfg.prompts, cfg.eval_prompts, cfg.gold)
    from rlhfkit import demo
    from rlhfkit.diagnostics.evaluate import WORLD_GOLD

    d = Path(cfg.out) / "demo"
    demo.run(demo.Config(out=str(d), seed=cfg.seed, scale=cfg.scale, threads=cfg.threads,
                         annotator_verbosity=cfg.annotator_verbosity, stop_after="sft"))
    return Start(str(d / "sft"), str(d / "world" / "train_prompts.jsonl"),
                 cfg.eval_prompts or str(d / "world" / "heldout_prompts.jsonl"), cfg.gold or WORLD_GOLD)


# ----------------------------------------------------------------------------------------------- the steps
def step_sample(cfg: Config, start: Start, k: int, policy: str, rdir: Path) -> list[dict]:
    """1. K responses per prompt from the current policy, on this round's seeded subset of the prompts."""
    return _sample_subset(cfg, k, policy, start.prompts, sizes(cfg)["prompts_per_round"], rdir, "")


def _sample_subset(cfg: Config, k: int, policy: str, prompts: str, n: int, rdir: Path, tag: str) -> list[dict]:
    """K samples of `policy` on a seeded subset of n prompts of the file: {tag}prompts/samples.jsonl in rdir."""
    from rlhfkit import data as data_lib
    from rlhfkit.rollout import sample

    s = sizes(cfg)
    rows = data_lib.read_jsonl(prompts)
    n = min(n, len(rows))
    pick = sorted(random.Random(f"rlhfkit-loop:{cfg.seed}:{k}:{tag}prompts").sample(range(len(rows)), n))
    data_lib.write_jsonl([rows[i] for i in pick], rdir / f"{tag}prompts.jsonl")
    out = sample.run(sample.Config(model=policy, prompts=str(rdir / f"{tag}prompts.jsonl"),
                                   output=str(rdir / f"{tag}samples.jsonl"), num_responses=s["num_responses"],
                                   max_new_tokens=s["max_new_tokens"], temperature=1.0,
                                   seed=cfg.seed * 1000 + k + (7919 if tag else 0)))  # a tag: its own stream
    return data_lib.read_jsonl(out)


def heldout_groups(cfg: Config, k: int, n: int) -> set[int]:
    """The held-out candidates rows of round k (at least one, and one fewer than all)."""
    m = min(max(1, round(n * cfg.heldout_fraction)), n - 1)
    return set(random.Random(f"rlhfkit-loop:{cfg.seed}:{k}:heldout").sample(range(n), m))


def world_labels(cfg: Config, seed: int, cands: list[dict]) -> list[dict]:
    """The world's simulated annotators' preference rows (ranking mode) for candidates rows, each with `group`."""
    from rlhfkit.world import label

    rows, _ = label.label_rows(cands, label.Config(mode="ranking", seed=seed, verbosity_scale=cfg.annotator_verbosity))
    return rows


def step_labels(cfg: Config, k: int, cands: list[dict], rdir: Path) -> list[dict]:
    """2. Preference rows for the round's candidates, each with `group` (its candidates row) and `heldout`."""
    from rlhfkit import data as data_lib

    if cfg.label_source == "world":
        rows = world_labels(cfg, cfg.seed * 1000 + k, cands)
        print(f"loop: round {k}: {len(rows)} pairs from the simulated annotators")
    else:
        rows = app_labels(cfg, k, cands)
    held = heldout_groups(cfg, k, len(cands))
    rows = [{**r, "heldout": r["group"] in held} for r in rows]
    data_lib.write_jsonl(rows, rdir / "labels.jsonl")
    return rows


def app_prefix(cfg: Config, k: int) -> str:
    """Item ids of round k in the app: one loop (its output directory) never shares items with another."""
    import hashlib

    tag = hashlib.sha256(str(Path(cfg.out).resolve()).encode()).hexdigest()[:8]
    return f"loop-{tag}-seed{cfg.seed}-round{k}-"


def app_labels(cfg: Config, k: int, cands: list[dict]) -> list[dict]:
    """Push the round's candidates into the app's database, wait until `quota` labels are in, export them."""
    from rlhfkit.app import rounds
    from rlhfkit.app.db import open_store

    store = open_store(cfg.app_db)
    prefix, quota = app_prefix(cfg, k), cfg.quota or len(cands)
    added = rounds.push(store, cands, prefix)
    print(f"loop: round {k}: {added} new items in {cfg.app_db} (ids {prefix}*); waiting for {quota} labels")
    t0 = time.monotonic()
    while (n := rounds.labelled(store, prefix)) < quota:
        if time.monotonic() - t0 > cfg.timeout_seconds:
            raise TimeoutError(f"loop: round {k}: {n} of {quota} labels after {cfg.timeout_seconds:g}s in "
                               f"{cfg.app_db}; label more in the app (rlhfkit label serve --db {cfg.app_db}) and rerun "
                               f"the same command: the loop resumes at round {k} and its items are kept")
        time.sleep(cfg.poll_seconds)
    rows = rounds.export(store, prefix)
    print(f"loop: round {k}: {n} labels, {len(rows)} pairs from the app")
    return rows


def step_rm(cfg: Config, start: Start, k: int, rdir: Path, labels: list[dict], cands: list[dict],
            prev_rm: str) -> dict:
    """3. A reward model on every label so far but this round's held-out prompts; the last one and the new one
    measured on the held-out pairs of the current policy's samples."""
    from rlhfkit import data as data_lib
    from rlhfkit import demo
    from rlhfkit.algorithms import rm
    from rlhfkit.diagnostics import rm_pairs

    root = Path(cfg.out)
    rows = [r for j in range(1, k) for r in data_lib.read_jsonl(root / f"round_{j}" / "labels.jsonl")]
    rows += [r for r in labels if not r["heldout"]]
    data_lib.write_jsonl(rows, rdir / "rm_data.jsonl")
    continued = replica_dirs(prev_rm) if cfg.rm_mode == "continue" and prev_rm else []
    for i in range(replicas(cfg)):  # replica i continues the last round's replica i (or its reward model)
        init = continued[min(i, len(continued) - 1)] if continued else start.model
        rm.train(rm.Config(output_dir=str(rdir / ("rm" if i == 0 else f"rm_replicas/replica-{i}")),
                           seed=cfg.seed + 100 * k + 7919 * i, threads=cfg.threads, model=init,
                           data=str(rdir / "rm_data.jsonl"), norm_data=str(rdir / "samples.jsonl"),
                           ensemble_size=cfg.rm_ensemble, **demo.rm_settings(sizes(cfg))))
    dirs = {"before": replica_dirs(prev_rm)} if prev_rm else {}
    dirs["after"] = replica_dirs(str(rdir / "rm"))
    groups = sorted(heldout_groups(cfg, k, len(cands)))
    held = [r for r in labels if r["heldout"]]
    pairs = rm_pairs.label_pairs(held, cands)
    return {"train_pairs": len(rows), "init": f"round_{k - 1}/rm" if continued else "start",
            **rm_pairs.measure(start.gold, dirs, cands, pairs, groups)}


def step_measure(cfg: Config, start: Start, k: int, rdir: Path, policy: str, prev_rm: str) -> dict | None:
    """3b. (world) The last round's and the new reward model on `measure_prompts` held-out prompts' samples of the
    current policy, labelled by the simulated annotators: the same measurement as step 3's on far more pairs.
    From round 3 on, round 1's reward model too (`first`: it learnt from the start policy's samples alone), and its
    change to the new one (`change_from_first`): what all the rounds of retraining did together, where one round's
    `change` is what the last one did."""
    from rlhfkit.diagnostics import rm_pairs

    n = sizes(cfg)["measure_prompts"]
    if not n or not start.eval_prompts:
        return None
    cands = _sample_subset(cfg, k, policy, start.eval_prompts, n, rdir, "measure_")
    rows = world_labels(cfg, cfg.seed * 1000 + k + 500, cands)
    first = {"first": replica_dirs(str(round_dir(cfg, 1) / "rm"))} if k >= 3 else {}
    dirs = first | ({"before": replica_dirs(prev_rm)} if prev_rm else {}) | {"after": replica_dirs(str(rdir / "rm"))}
    pairs = rm_pairs.label_pairs(rows, cands)
    return {"prompts": len(cands), **rm_pairs.measure(start.gold, dirs, cands, pairs, list(range(len(cands))))}


def step_policy(cfg: Config, start: Start, k: int, rdir: Path, policy: str, rm_dir: str) -> str:
    """4. PPO against the round's reward model, or DPO on the round's labels, from the current policy."""
    s = sizes(cfg)
    out = rdir / "policy"
    ref = start.model if cfg.kl_reference == "start" and policy != start.model else ""
    common = dict(output_dir=str(out), seed=cfg.seed + 100 * k, threads=cfg.threads, model=policy, ref_model=ref)
    if cfg.algorithm == "ppo":
        from rlhfkit.algorithms import ppo
        from rlhfkit.models.rewards import member_dirs

        ppo.train(ppo.Config(  # the reward: the ensemble's mean; the critic starts from one model (member-0)
            **common, reward_model=[rm_dir], value_model=str(member_dirs(rm_dir)[0]), data=start.prompts,
            kl_coef=cfg.kl_coef,
            max_new_tokens=s["max_new_tokens"], rollout_batch_size=s["ppo_rollout"], num_minibatches=2,
            micro_batch_size=s["ppo_rollout"] // 2, ppo_epochs=s["ppo_epochs"],
            max_steps=s["policy_steps"] * 2 * s["ppo_epochs"], learning_rate=s["ppo_lr"], warmup_steps=0,
            lr_scheduler="constant"))
    else:
        from rlhfkit import data as data_lib
        from rlhfkit.algorithms import dpo

        rows = [r for r in data_lib.read_jsonl(rdir / "labels.jsonl") if not r["heldout"]]
        data_lib.write_jsonl(rows, rdir / "dpo_data.jsonl")
        dpo.train(dpo.Config(
            **common, data=str(rdir / "dpo_data.jsonl"), loss=["sigmoid"], beta=cfg.kl_coef,
            length_alpha=s["dpo_length_alpha"], num_epochs=s["policy_steps"], micro_batch_size=s["dpo_batch"],
            learning_rate=s["dpo_lr"], max_length=128, precompute_ref=True,
            ref_cache_dir=str(Path(cfg.out) / "ref_cache"), warmup_steps=5))
    return str(out)


def step_eval(cfg: Config, start: Start, policy: str, rm_dir: str, rdir: Path) -> dict | None:
    """5. The policy on the held-out prompts (fixed sampling seed), against the start policy's answers."""
    if not start.eval_prompts:
        return None
    import torch

    from rlhfkit import data as data_lib
    from rlhfkit import models
    from rlhfkit.diagnostics.evaluate import evaluate_policy
    from rlhfkit.models.rewards import load_reward

    tok = models.load_tokenizer(start.model)
    dev = models.inference_device()
    ref = models.load_causal_lm(start.model, tok).to(dev)
    model = ref if policy == start.model else models.load_causal_lm(policy, tok).to(dev)
    first = Path(cfg.out) / "round_0" / "eval.json"
    reference = {"start": json.loads(first.read_text())} if policy != start.model else None
    torch.manual_seed(cfg.seed)
    res = evaluate_policy(model, tok, data_lib.read_jsonl(start.eval_prompts),
                          judges={"proxy": load_reward(rm_dir)} if rm_dir else {}, gold=start.gold or None,
                          reference=reference, ref_model=ref, ref_name="start",
                          max_new_tokens=sizes(cfg)["max_new_tokens"], temperature=1.0, seed=cfg.seed)
    (rdir / "eval.json").write_text(json.dumps(res, default=str))
    keys = ("gold", "gold_se", "gold_components", "proxy", "win_rate_vs_start", "kl_to_start", "mean_length",
            "style_rates", "finished_rate", "n")
    out = {k: res[k] for k in keys if k in res}
    if "gold" in res:
        out["gold_ci"] = [res["gold"] - 1.96 * res["gold_se"], res["gold"] + 1.96 * res["gold_se"]]
    if isinstance(out.get("win_rate_vs_start"), dict):
        out["win_rate_vs_start"] = {k: out["win_rate_vs_start"][k] for k in ("mean", "low", "high", "n")}
    return out


# ----------------------------------------------------------------------------------------------- orchestration
def round_dir(cfg: Config, k: int) -> Path:
    return Path(cfg.out) / f"round_{k}"


def run_round(cfg: Config, start: Start, k: int, policy: str, prev_rm: str) -> dict:
    """Steps 1-5 of round k from `policy` (and the last round's reward model `prev_rm`, "" in round 1)."""
    rdir = round_dir(cfg, k)
    rdir.mkdir(parents=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal t
        seconds[step] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()

    cands = step_sample(cfg, start, k, policy, rdir)
    lap("sample")
    labels = step_labels(cfg, k, cands, rdir)
    lap("labels")
    rm_res = step_rm(cfg, start, k, rdir, labels, cands, prev_rm)
    lap("rm")
    if (m := step_measure(cfg, start, k, rdir, policy, prev_rm)) is not None:
        rm_res["measure"] = m
        lap("measure")
    new_policy = step_policy(cfg, start, k, rdir, policy, str(rdir / "rm"))
    lap("policy")
    ev = step_eval(cfg, start, new_policy, str(rdir / "rm"), rdir)
    lap("eval")
    # checkpoints are for resuming a killed trainer only; the round is done
    for ckpt in [*rdir.glob("*/checkpoints"), *rdir.glob("rm_replicas/*/checkpoints")]:
        shutil.rmtree(ckpt)
    return {"round": k, "policy": f"round_{k}/policy", "rm": f"round_{k}/rm",
            "labels": {"pairs": len(labels), "heldout_pairs": sum(r["heldout"] for r in labels),
                       "prompts": len(cands)},
            "rm_eval": rm_res, "eval": ev, "seconds": seconds}


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def check_state(cfg: Config) -> None:
    """Refuse to resume a loop that ran with other settings, its scale's sizes included (a larger `rounds` is
    fine); record this one's."""
    path = Path(cfg.out) / "loop_state.json"
    mine = {k: v for k, v in config_lib.to_dict(cfg).items() if k not in VOLATILE + ("out",)}
    mine["sizes"] = sizes(cfg)
    if path.exists():
        theirs = json.loads(path.read_text()).get("config", {})
        default = {f.name: f.default for f in fields(Config)}  # a newer setting at its default resumes an older loop
        theirs |= {k: default[k] for k in mine if k not in theirs and k in default}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise ValueError(f"{cfg.out} holds a loop run with other settings ({', '.join(diff)}): use a new "
                             f"--output-dir, or the settings in {path}")
    done = sorted(int(p.parent.name.split("_")[1]) for p in Path(cfg.out).glob("round_*/metrics.json"))
    _atomic_json(path, {"config": mine, "rounds_done": [k for k in done if k > 0]})


def summarize(cfg: Config, rounds: list[dict]) -> dict:
    """summary.json: the rounds' metrics, and gold of each round against round 1 and the start, paired by prompt."""
    from rlhfkit.diagnostics.metrics import paired_bootstrap

    out: dict[str, Any] = {"config": config_lib.to_dict(cfg), "rounds": rounds, "comparisons": {}}
    per_prompt = {}
    for r in rounds:
        path = round_dir(cfg, r["round"]) / "eval.json"
        if path.exists():
            samples = json.loads(path.read_text())["samples"]
            if samples and "gold" in samples[0]["scores"]:
                per_prompt[r["round"]] = [s["scores"]["gold"] for s in samples]
    last = max(per_prompt, default=0)
    for base in (0, 1):
        if base in per_prompt and last > base:
            out["comparisons"][f"gold_round_{last}_vs_{base}"] = paired_bootstrap(per_prompt[base], per_prompt[last])
    return out


def run(cfg: Config) -> Path:
    """Run (or resume) the loop; returns summary.json's path."""
    import torch

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    check_state(cfg)
    config_lib.save(cfg, root / "config.yaml")
    start = prepare(cfg)
    rounds: list[dict] = []
    policy, prev_rm = start.model, ""
    for k in range(0, cfg.rounds + 1):
        rdir = round_dir(cfg, k)
        marker = rdir / "metrics.json"
        if marker.exists():
            print(f"loop: round {k}: finished earlier, reused")
            m = json.loads(marker.read_text())
        else:
            if rdir.exists():
                shutil.rmtree(rdir)  # an unfinished round is redone from its start
            print(f"loop: round {k} of {cfg.rounds}" if k else "loop: round 0: the start policy")
            if k == 0:
                rdir.mkdir(parents=True)
                m = {"round": 0, "policy": "start", "eval": step_eval(cfg, start, start.model, "", rdir)}
            else:
                m = run_round(cfg, start, k, policy, prev_rm)
            _atomic_json(marker, m)
            check_state(cfg)
        rounds.append(m)
        if k:  # the next round starts from this round's policy and reward model
            policy, prev_rm = str(rdir / "policy"), str(rdir / "rm")
    summary = summarize(cfg, rounds)
    _atomic_json(root / "summary.json", summary)
    from rlhfkit.diagnostics import report_loop

    report = report_loop.write(summary, root / "loop_report.html")
    print(f"loop: {cfg.rounds} rounds in {root}; report {report}")
    return root / "summary.json"
