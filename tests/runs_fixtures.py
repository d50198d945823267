"""A runs directory for the playground / explorer / dashboard tests, built in seconds (no demo run):

    runs/demo/            summary.json and eval/<policy>.json in the demo's format, model text carrying XSS payloads
    runs/demo/sft         the tiny conftest Llama (a real checkpoint the playground worker loads)
    runs/demo/ppo_beta_0.1  the same weights again, so two policies answer
    runs/demo/rm          a tiny untrained LlamaForSequenceClassification (the proxy reward)
    runs/demo/ppo_beta_{0.01,0.1,0.5}/metrics.jsonl, ppo_beta_0.01/alarms.jsonl
    runs/private/run      metrics.jsonl that only admins may see (annotators get --runs-public demo)
    runs/private/sft      a checkpoint only admins may use
    runs/user/eval1/      an `rlhfkit eval --output-dir` over a user's runs: eval.json, eval/<policy>.json
    runs/user/{sft,ppo_lo,ppo_mid,ppo_hi}  those runs: config.yaml (kl_coef 0.02 / 0.08 / 0.3, not in their names),
                          rlhfkit.json, metrics.jsonl, monitor.jsonl; ppo_lo/alarms.jsonl
    runs/private/ppo_secret  an evaluated run that only admins may see (kl_coef 0.05)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

XSS = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=1</script>",
    '"><svg onload="window.__xss=1">',
    "<iframe srcdoc=\"<script>parent.__xss=1</script>\"></iframe>",
    "javascript:window.__xss=1",
]
BETAS = (0.01, 0.1, 0.5)
PROMPTS = ["What is 3 plus 4?", "The zorb is blue. The wug is red. What color is the zorb?",
           "How do I hack my neighbor?", "What is my bird's name?", "Sort these numbers: 7 2 9 4.",
           "I am sure 3 plus 4 is 8. Am I right?", "What is 2 minus 2?", "Prompt with " + XSS[0]]


def _policy(gold: float, proxy: float, kl: float, length: float) -> dict:
    return {"gold": gold, "proxy": proxy, "kl_to_sft": kl, "mean_length": length,
            "gold_components": {"helpful": gold, "harmless": 0.0, "honest": 0.0, "concise": -0.1}}


def write_demo(demo: Path) -> dict:
    """summary.json, eval/*.json and per-run metrics in the shapes `rlhfkit demo` writes them."""
    policies = {"base": _policy(-0.4, -0.5, 0.6, 20), "sft": _policy(-0.2, -0.3, 0.0, 12),
                "ppo_beta_0.01": _policy(-0.3, 1.4, 2.2, 30), "ppo_beta_0.1": _policy(0.1, 0.6, 0.5, 16),
                "ppo_beta_0.5": _policy(-0.1, 0.0, 0.1, 12), "dpo": _policy(0.0, 0.2, 0.3, 13),
                "bon_4": _policy(0.05, 0.9, 0.636, 14)}
    summary = {"seed": 0, "config": {"ppo_betas": list(BETAS), "bon_n": [4]}, "policies": policies,
               "alarms": [{"policy": "ppo_beta_0.01", "kind": "gold_falling", "step": 4}]}
    (demo / "eval").mkdir(parents=True, exist_ok=True)
    (demo / "summary.json").write_text(json.dumps(summary))
    for k, name in enumerate(n for n in policies if not n.startswith("bon")):
        samples = [{"prompt": p, "kind": "arith", "length": 5 + i, "logp": -10.0 - k, "ref_logp": -10.5 - 2 * k,
                    "response": f"{name} answer {i} " + XSS[(i + k) % len(XSS)],
                    # the smallest KL coefficient's answers: proxy above SFT's, gold below (over-optimised)
                    "scores": {"proxy": 0.1 * i + k, "gold": -0.1 * i - (0.3 if name == "ppo_beta_0.01" else 0.0)},
                    "gold_components": {"helpful": 0.0, "harmless": 0.0, "honest": 0.0, "concise": -0.1 * i}}
                   for i, p in enumerate(PROMPTS)]
        (demo / "eval" / f"{name}.json").write_text(json.dumps({"samples": samples}))
    for j, beta in enumerate(BETAS):
        run = demo / f"ppo_beta_{beta:g}"
        run.mkdir(exist_ok=True)
        rows = [{"step": s, "rollout/score": 0.1 * s * (3 - j), "kl/seq": 0.05 * s, "kl/beta": beta,
                 "rollout/length": 12 + s * (2 - j), "train/loss": 1.0 / s, "monitor/gold": 0.02 * s - 0.01 * s * s}
                for s in range(1, 11)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        probes = [{"step": s, "kl": 0.1 * s / (j + 1), "gold": 0.05 * s - 0.02 * s * s / (j + 1), "proxy": 0.2 * s,
                   "length": 12 + s, "samples": [{"prompt": "p", "response": XSS[0]}]} for s in range(0, 8, 2)]
        (run / "monitor.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probes))
    (demo / "ppo_beta_0.01" / "alarms.jsonl").write_text(
        json.dumps({"kind": "gold_falling", "step": 4, "message": "gold fell " + XSS[1]}) + "\n")
    return summary


USER_BETAS = {"ppo_lo": 0.02, "ppo_mid": 0.08, "ppo_hi": 0.3}


def _user_run(run: Path, stage: str, beta: float | None) -> None:
    """A run directory as a trainer leaves it (the model weights aside): the resolved config.yaml, rlhfkit.json."""
    from rlhfkit import config as config_lib
    from rlhfkit.algorithms import ppo, sft

    cfg = (sft.Config(model="base", data="sft.jsonl", output_dir=str(run)) if beta is None else
           ppo.Config(model="runs/user/sft", data="prompts.jsonl", kl_coef=beta, output_dir=str(run)))
    config_lib.save(cfg, run / "config.yaml")
    (run / "rlhfkit.json").write_text(json.dumps({"stage": stage, "steps": 10, **({"kl_coef": beta} if beta else {})}))


def write_eval(root: Path) -> dict:
    """A user's runs and an `rlhfkit eval --output-dir runs/user/eval1` over them, in the shapes those write. The
    sources are recorded as eval would from another working directory and after the runs moved, so the server
    finds each run below its runs directory by the path's trailing parts or by `source_dir` as it is."""
    user, ev = root / "user", root / "user" / "eval1"
    (ev / "eval").mkdir(parents=True, exist_ok=True)
    _user_run(user / "sft", "sft", None)
    for j, (name, beta) in enumerate(USER_BETAS.items()):
        run = user / name
        _user_run(run, "ppo", beta)
        rows = [{"step": s, "rollout/score": 0.1 * s * (3 - j), "kl/seq": 0.05 * s, "kl/beta": beta}
                for s in range(1, 6)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        probes = [{"step": s, "kl": 0.2 * s / (j + 1), "gold": 0.05 * s - 0.03 * s * s / (j + 1), "proxy": 0.3 * s,
                   "length": 12 + s} for s in range(0, 8, 2)]
        (run / "monitor.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probes))
    (user / "ppo_lo" / "alarms.jsonl").write_text(
        json.dumps({"kind": "proxy_gold_divergence", "step": 6, "message": "gold fell " + XSS[2]}) + "\n")
    secret = root / "private" / "ppo_secret"
    _user_run(secret, "ppo", 0.05)
    (secret / "alarms.jsonl").write_text(json.dumps({"kind": "kl_spike", "step": 2, "message": "secret"}) + "\n")
    sources = {"sft": {"source": "runs/user/sft"},  # relative to where eval ran: found as user/sft
               "ppo_lo": {"source": str(user / "ppo_lo"), "source_dir": str(user / "ppo_lo")},
               "ppo_mid": {"source": "ppo_mid", "source_dir": "/moved/away/runs/user/ppo_mid"},
               "ppo_hi": {"source": "runs/user/ppo_hi"},
               "ppo_secret": {"source": str(secret), "source_dir": str(secret)}}
    kls = {"sft": 0.0, "ppo_lo": 2.5, "ppo_mid": 0.6, "ppo_hi": 0.1, "ppo_secret": 1.0}
    gold = {"sft": -0.2, "ppo_lo": -0.5, "ppo_mid": 0.15, "ppo_hi": -0.05, "ppo_secret": 0.0}
    policies = {}
    for k, name in enumerate(sources):
        samples = [{"prompt": p, "kind": "arith", "length": 6 + i, "logp": -8.0 - k, "ref_logp": -8.0 - 2 * k,
                    "response": f"{name} says {i} " + XSS[(i + 2 * k) % len(XSS)],
                    # the smallest coefficient fools the reward model: proxy above SFT's, gold below
                    "scores": {"proxy": 0.2 * i + k, "gold": -0.1 * i - (0.4 if name == "ppo_lo" else 0.0)},
                    "gold_components": {"helpful": 0.0, "harmless": 0.0, "honest": 0.0, "concise": -0.1 * i}}
                   for i, p in enumerate(PROMPTS + ["Extra prompt " + XSS[1], "Last prompt?"])]
        res = {"n": len(samples), "gold": gold[name], "proxy": 0.4 * k, "kl_to_ref": kls[name], "mean_length": 8 + k,
               "gold_components": {"helpful": gold[name]}, **sources[name], "samples": samples}
        (ev / "eval" / f"{name}.json").write_text(json.dumps(res))
        policies[name] = {**res, "samples": samples[:2]}  # eval.json keeps n_samples_kept of them
    policies["dpo"] = {"gold": 0.05, "proxy": 0.3, "kl_to_ref": 0.4, "mean_length": 9, "source": "runs/user/dpo",
                       "samples": [{"prompt": PROMPTS[0], "response": "dpo " + XSS[0], "scores": {"gold": 0.1}}]}
    out = {"config": {"reference": "sft", "ref_model": "runs/user/sft", "seed": 0, "n_samples_kept": 2},
           "policies": policies}
    (ev / "eval.json").write_text(json.dumps(out))
    return out


def build_runs(root: Path, toy_dir: Path) -> Path:
    """The whole runs directory (see the module docstring); `toy_dir` is conftest's session fixture."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlhfkit import models

    demo = root / "demo"
    write_demo(demo)
    tok = models.load_tokenizer(str(toy_dir / "tok"))
    for dst in (demo / "sft", demo / "ppo_beta_0.1", root / "private" / "sft"):
        dst.mkdir(parents=True, exist_ok=True)
        for f in (toy_dir / "model").iterdir():
            if f.is_file():
                shutil.copy(f, dst / f.name)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    models.save(LlamaForSequenceClassification(cfg), tok, demo / "rm")
    private = root / "private" / "run"
    private.mkdir(parents=True)
    (private / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 1.0}) + "\n")
    write_eval(root)
    return root
