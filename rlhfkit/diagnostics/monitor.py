"""The over-optimisation monitor: is the policy improving, or learning to fool the reward model?

Used inside the online trainers (ppo, grpo, rloo, reinforce-pp). Every `monitor_every` steps it samples the policy on a
fixed held-out probe set and records, in run_dir/monitor.jsonl:
  proxy       the trainer's reward (the reward model it optimises), mean over probes
  gold        a gold / held-out judge, when given (the world's gold, a second reward model, ...)
  kl          Monte-Carlo sequence KL(policy || reference) in nats (k1; also k3 and standard errors)
  length      mean response length in tokens
  distinct_2  distinct bigrams / bigrams over the probe responses
  disagreement  mean std across a reward-model ensemble, when the proxy reports one
  entropy     the policy's mean token entropy, when the trainer passes it (`run(step, policy, entropy=...)`)
and raises alarms (metrics.py, thresholds are attributes): proxy up while gold down over a window (Gao,
Schulman & Hilton 2022), length drift, ensemble disagreement rising, diversity collapse, entropy collapse.
Each alarm is raised once per kind, printed, and appended to run_dir/alarms.jsonl.

Sampling is at temperature 1 with the same seed at every evaluation (common random numbers: a change between
two evaluations is the policy's, not the dice's), and temperature 1 is what makes the Monte-Carlo KL an
estimate of KL(policy || reference) of the distributions being trained.

    monitor = Monitor.from_config(MonitorConfig(prompts="probe.jsonl", every=10), tokenizer, run_dir,
                                  proxy=reward_fn, ref_model=ref)  # None when off
    ...
    if monitor is not None and monitor.due(step):
        metrics.update(monitor.run(step, policy, entropy=last_entropy))  # entropy: optional
        monitor.save_best(policy, tokenizer)          # run_dir/best/ when this step is the best so far
        if monitor.should_stop: break                 # only with early_stop

Call it on the main process (rank 0) only; it writes files. With early stop under DDP, broadcast should_stop.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.diagnostics import metrics as M

ALARM_KINDS = ("proxy_up_gold_down", "length_drift", "disagreement_rising", "diversity_collapse",
               "entropy_collapse")


@dataclass
class MonitorConfig:
    """What a trainer hands the monitor (the online trainers' monitor_* fields, OnlineConfig.monitor_config)."""

    prompts: str = ""
    """Held-out probe prompt file ("" disables the monitor)."""
    every: int = 0
    """Evaluate every N optimizer steps (0: never)."""
    gold: str = ""
    """Gold / held-out judge spec (evaluate.Judge.load); "" for none."""
    n: int = 64
    """Probe prompts used (the first n; 0: all)."""
    max_new_tokens: int = 64
    """Tokens per probe response."""
    seed: int = 0
    """Sampling seed, the same at every evaluation."""
    early_stop: bool = False
    """Let should_stop say stop once `patience` evaluations pass without a new best."""
    patience: int = 3
    """Evaluations without a new best held-out score before should_stop (with early_stop)."""
    resume: bool = False
    """Re-read an earlier monitor.jsonl / alarms.jsonl in the run directory instead of starting afresh."""


class Monitor:
    # Alarm thresholds (metrics.py): plain attributes, change them on the instance.
    window: int = 3
    """Evaluations averaged (trailing mean) before comparing, for every alarm."""
    min_gold_drop: float = 0.02
    """proxy_up_gold_down fires when the gold mean falls this far below its peak while the proxy is above its
    value at that peak."""
    length_ratio: float = 1.5
    """length_drift fires when the mean length leaves [start / ratio, start * ratio]."""
    disagreement_ratio: float = 1.5
    """disagreement_rising fires above ratio x the starting disagreement."""
    diversity_ratio: float = 0.5
    """diversity_collapse fires below ratio x the starting distinct-2."""
    entropy_ratio: float = 0.3
    """entropy_collapse fires below ratio x the starting policy entropy (set by the constructor argument)."""
    batch_size: int = 64
    """Probe prompts per generation batch."""

    def __init__(self, prompts: list, tokenizer, run_dir: str | Path, *, every: int, proxy=None, gold=None,
                 ref_model=None, max_new_tokens: int = 64, seed: int = 0, early_stop: bool = False,
                 temperature: float = 1.0, kinds: list | None = None, resume: bool = False,
                 entropy_ratio: float = 0.3, patience: int = 3):
        if every < 1:
            raise ValueError("monitor: every must be >= 1")
        self.prompts = list(prompts)
        self.kinds = kinds
        self.tokenizer = tokenizer
        self.run_dir = Path(run_dir)
        self.every = every
        self.proxy = proxy
        # gold: an evaluate.Judge (a spec or a plain function is wrapped: Judge.of), which knows whether it is the
        # world's gold judge and so has components to report
        self.gold = None
        if gold is not None:
            from rlhfkit.diagnostics.evaluate import Judge

            self.gold = Judge.of(gold)
        self.ref_model = ref_model
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.early_stop = early_stop
        self.temperature = temperature
        if patience < 1:
            raise ValueError(f"monitor: patience must be >= 1, got {patience}")
        self.patience = patience
        if not 0 < entropy_ratio < 1:
            raise ValueError(f"monitor: entropy_ratio must be in (0, 1), got {entropy_ratio}")
        self.entropy_ratio = entropy_ratio
        self.records: list[dict] = []
        self.alarms: list[dict] = []
        self.best_step: int | None = None
        self.best_score: float | None = None
        self._best_saved: int | None = None
        self.path = self.run_dir / "monitor.jsonl"
        self.alarms_path = self.run_dir / "alarms.jsonl"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._load()
        else:
            for p in (self.path, self.alarms_path):
                if p.exists():
                    p.unlink()

    # ------------------------------------------------------------------------------------------- building
    @classmethod
    def from_config(cls, cfg: MonitorConfig, tokenizer, run_dir, proxy=None, ref_model=None) -> "Monitor | None":
        """A monitor from its settings, or None when cfg.prompts is empty or cfg.every is 0."""
        if not cfg.prompts or cfg.every <= 0:
            return None
        from rlhfkit import data as data_lib

        rows = data_lib.load_rows(cfg.prompts)
        if cfg.n > 0:
            rows = rows[:cfg.n]
        return cls([r["prompt"] for r in rows], tokenizer, run_dir, every=cfg.every, proxy=proxy,
                   gold=cfg.gold or None, ref_model=ref_model, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                   early_stop=cfg.early_stop, kinds=[r.get("kind", r.get("category")) for r in rows],
                   resume=cfg.resume, patience=cfg.patience)

    def _load(self) -> None:
        """Resume: re-read earlier records and alarms, so trends and the best step carry over."""
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    self._track(json.loads(line))
                except (json.JSONDecodeError, KeyError):
                    continue  # a line torn by a crash
        if self.alarms_path.exists():
            for line in self.alarms_path.read_text().splitlines():
                try:
                    self.alarms.append(json.loads(line))
                except json.JSONDecodeError:
                    continue

    # ------------------------------------------------------------------------------------------- running
    def due(self, step: int) -> bool:
        return step % self.every == 0

    def run(self, step: int, policy, entropy: float | None = None) -> dict[str, float]:
        """Evaluate `policy` on the probe set; returns the "monitor/*" metrics that are available
        (gold, kl and disagreement only when a gold judge / reference model / ensemble is there).
        entropy: the trainer's latest mean token entropy of the policy on its own samples (its `policy/entropy`),
        recorded and watched by the entropy_collapse alarm; None when there is none yet."""
        from rlhfkit.diagnostics.evaluate import call_judge, response_lengths, sample_responses, sequence_logps
        from rlhfkit.models.modeling import adapters_disabled

        t0 = time.perf_counter()
        tok = self.tokenizer
        # 1. sample the probe prompts (fixed seed, temperature 1: see module docstring)
        p_ids, r_ids, _, texts = sample_responses(policy, tok, self.prompts, self.max_new_tokens,
                                                   self.temperature, self.seed, self.batch_size)
        rec: dict[str, Any] = {"step": int(step), "n": len(texts)}
        # 2. proxy (the trainer's reward) and, when the proxy is an ensemble, its disagreement
        if self.proxy is not None:
            scores, std = call_judge(self.proxy, self.prompts, texts)
            rec["proxy"] = M.mean(scores)
            if std is not None:
                rec["disagreement"] = M.mean(std)
        # 3. gold / held-out judge (with the world's components when it is the world's gold)
        if self.gold is not None:
            gscores, _ = call_judge(self.gold, self.prompts, texts)
            rec["gold"] = M.mean(gscores)
            if self.gold.world:
                from rlhfkit import data as data_lib
                from rlhfkit.world import COMPONENTS, gold

                comps = [gold(data_lib.prompt_text(p), t) for p, t in zip(self.prompts, texts)]
                rec["gold_components"] = {c: M.mean([g[c] for g in comps]) for c in COMPONENTS}
        # 4. Monte-Carlo sequence KL to the reference, both scored at the sampling temperature
        if self.ref_model is not None and self.temperature > 0:
            lp = sequence_logps(policy, p_ids, r_ids, tok.pad_token_id, self.temperature, self.batch_size)
            with adapters_disabled(self.ref_model):  # a LoRA policy serving as its own reference
                lr = sequence_logps(self.ref_model, p_ids, r_ids, tok.pad_token_id, self.temperature,
                                    self.batch_size)
            kl = M.mc_sequence_kl(lp, lr)
            rec.update(kl=kl["kl"], kl_se=kl["se"], kl_k3=kl["k3"])
        # 5. length and diversity
        rec["length"] = M.mean(response_lengths(r_ids, tok.eos_token_id))
        rec["distinct_2"] = M.distinct_n(texts, 2)
        if entropy is not None:
            rec["entropy"] = float(entropy)
        rec["samples"] = [{"prompt": _text(p), "response": t} for p, t in list(zip(self.prompts, texts))[:3]]
        rec["seconds"] = time.perf_counter() - t0
        # 6. log, track the best step, evaluate the alarms
        if any(r["step"] >= step for r in self.records):  # a resumed run re-evaluates: drop the stale records
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records if r["step"] < step))
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self._track(rec)
        self._check_alarms()
        keys = ("proxy", "gold", "kl", "length", "distinct_2", "disagreement", "entropy")
        return {f"monitor/{k}": float(rec[k]) for k in keys if k in rec}

    def _track(self, rec: dict) -> None:
        self.records = [r for r in self.records if r["step"] < rec["step"]] + [rec]  # a resumed run rewrites steps
        score = rec.get("gold", rec.get("proxy"))
        if score is not None and math.isfinite(score) and (self.best_score is None or score > self.best_score):
            self.best_score, self.best_step = float(score), int(rec["step"])

    def _series(self, key: str) -> tuple[list[int], list[float]]:
        rs = [r for r in self.records if key in r]
        return [r["step"] for r in rs], [float(r[key]) for r in rs]

    def _check_alarms(self) -> None:
        raised = {a["kind"] for a in self.alarms}
        found = []
        both = [r for r in self.records if "proxy" in r and "gold" in r]
        if both:
            found.append(M.proxy_up_gold_down([r["step"] for r in both], [r["proxy"] for r in both],
                                              [r["gold"] for r in both], self.window, self.min_gold_drop))
        found.append(M.length_drift(*self._series("length"), window=self.window, ratio=self.length_ratio))
        found.append(M.disagreement_rising(*self._series("disagreement"), window=self.window,
                                           ratio=self.disagreement_ratio))
        found.append(M.diversity_collapse(*self._series("distinct_2"), window=self.window,
                                          ratio=self.diversity_ratio))
        found.append(M.entropy_collapse(*self._series("entropy"), window=self.window, ratio=self.entropy_ratio))
        for alarm in found:
            if alarm is None or alarm["kind"] in raised:
                continue
            self.alarms.append(alarm)
            with open(self.alarms_path, "a") as f:
                f.write(json.dumps(alarm) + "\n")
            print(f"monitor: ALARM {alarm['kind']} at step {alarm['step']}: {alarm['message']}")

    # ------------------------------------------------------------------------------------------- best / stop
    @property
    def last_step(self) -> int | None:
        return self.records[-1]["step"] if self.records else None

    @property
    def should_stop(self) -> bool:
        """True with early_stop once `patience` evaluations have passed without a new best held-out score."""
        if not self.early_stop or self.best_step is None:
            return False
        since = sum(1 for r in self.records if r["step"] > self.best_step)
        return since >= self.patience

    def save_best(self, policy, tokenizer=None) -> Path | None:
        """Write run_dir/best/ (models.save) when the latest evaluation is a new best; returns the path if written."""
        if self.best_step is None or self.best_step != self.last_step or self._best_saved == self.best_step:
            return None
        from rlhfkit import models
        from rlhfkit.diagnostics.evaluate import unwrap

        out = models.save(unwrap(policy), tokenizer if tokenizer is not None else self.tokenizer,
                          self.run_dir / "best", metadata={"step": self.best_step, "score": self.best_score,
                                                           "score_key": "gold" if self.gold is not None else "proxy"})
        self._best_saved = self.best_step
        return out


def _text(prompt: Any) -> str:
    from rlhfkit import data as data_lib

    return data_lib.prompt_text(prompt)
