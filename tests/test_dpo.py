"""`rlhfkit dpo` on a tiny model: log-prob bookkeeping (log 2 at step 0), the shared-prompt packed layout against
plain padded rows, learning, every loss type, KTO, the reference cache, reference-free variants, accumulation
invariance and resume."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import pytest
import torch

from rlhfkit import config as config_lib
from rlhfkit.algorithms import dpo
from rlhfkit import models
from rlhfkit.engine import read_metrics
from rlhfkit.math.losses import LossType
from rlhfkit.data.preference import mismatched_partners
from rlhfkit.models.layout import build_layout
from rlhfkit.models.logps import SequenceLogprobs, continuation_logps, padded_logps, run_layout

from conftest import toy_rows, write_jsonl


def pref_rows(n: int = 64, seed: int = 0) -> list[dict]:
    """chosen = the correct sum, rejected = a wrong one (conversational, like the toy SFT rows)."""
    rng = random.Random(seed)
    out = []
    for r in toy_rows(n, seed):
        right = r["completion"][0]["content"]
        total = int(right.split()[-1].rstrip("."))
        wrong = f"The answer is {total + rng.choice([1, 2, 3])}."
        out.append({"prompt": r["prompt"], "chosen": r["completion"],
                    "rejected": [{"role": "assistant", "content": wrong}]})
    return out


@pytest.fixture(scope="module")
def pref(toy_dir):
    return write_jsonl(toy_dir / "pref.jsonl", pref_rows())


def cfg(toy_dir, pref, out, **kw):
    base = dict(model=str(toy_dir / "model"), data=str(pref), output_dir=str(out), max_steps=2, micro_batch_size=4,
                max_length=48, learning_rate=1e-3, progress=False, seed=0, ref_cache_dir=str(out) + "-cache")
    base.update(kw)
    c = dpo.Config(**base)
    c.validate()
    return c


def losses_of(run_dir, key="train/loss"):
    return [m[key] for m in read_metrics(run_dir)]


def test_step0_loss_is_log2_when_policy_is_reference(toy_dir, pref, tmp_path):
    """pi == pi_ref makes every log-ratio 0, so -log sigmoid(0) = log 2 exactly, whatever the log-probs are:
    any bookkeeping error (a token counted in the policy sum but not the reference's, a shifted mask) breaks it.
    Also with the cached reference (computed in another layout) to 1e-6."""
    dpo.train(cfg(toy_dir, pref, tmp_path / "fly", max_steps=1))
    m = read_metrics(tmp_path / "fly")[0]
    assert abs(m["train/loss"] - math.log(2)) < 1e-6
    assert m["rewards/chosen"] == 0 and m["rewards/margin"] == 0 and m["kl/logratio_chosen"] == 0
    dpo.train(cfg(toy_dir, pref, tmp_path / "pre", max_steps=1, precompute_ref=True))
    m = read_metrics(tmp_path / "pre")[0]
    assert abs(m["train/loss"] - math.log(2)) < 1e-6
    assert abs(m["kl/logratio_chosen"]) < 1e-4
    dpo.train(cfg(toy_dir, pref, tmp_path / "ref", max_steps=1, ref_model=str(toy_dir / "model")))  # --ref-model
    assert abs(read_metrics(tmp_path / "ref")[0]["train/loss"] - math.log(2)) < 1e-6


def _items(toy_dir, pref, n=6):
    tok = models.load_tokenizer(str(toy_dir / "model"))
    c = cfg(toy_dir, pref, toy_dir / "unused", max_length=40)
    ex = dpo.tokenise(c, tok, pref_rows(n, seed=3), {})
    # make lengths differ so padding, packing and the prompt cut all matter
    items = [(e.prompt[i % 3:], [e.completions[0], e.completions[1][: len(e.completions[1]) - (i % 2)]])
             for i, e in enumerate(ex)]
    return tok, items


def test_packed_shared_prompt_layout_equals_padded_rows(toy_dir, pref):
    """[prompt | chosen | rejected] rows with the 4-D mask, packed several to a row, give the same log-probs as
    2B separate right-padded rows (float64 so the comparison is about the layout, not rounding)."""
    tok, items = _items(toy_dir, pref)
    model = models.load_causal_lm(str(toy_dir / "model"), tok).double().eval()
    want = padded_logps(model, items, tok.pad_token_id)
    for packing in (False, True):
        lay = build_layout(items, tok.pad_token_id, packing)
        got = run_layout(SequenceLogprobs(model), lay, torch.device("cpu"))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert lay.tokens == sum(len(p) + len(c) + len(r) for p, (c, r) in items)  # the prompt once per pair
    # packing really packs when blocks fit: two short items share one row of the longest one's capacity
    short = [([1, 2], [[3], [4]]), ([1, 2], [[5], [6]]), ([1, 2, 3, 4, 5, 6, 7, 8], [[3, 4], [4, 5]])]
    lay = build_layout(short, tok.pad_token_id, True)
    assert lay.input_ids.shape[0] == 2
    torch.testing.assert_close(run_layout(SequenceLogprobs(model), lay, torch.device("cpu")),
                               padded_logps(model, short, tok.pad_token_id), rtol=0, atol=1e-5)


def test_kto_mismatched_logps_from_saved_prompt_keys_and_values(toy_dir, pref):
    """KTO's z0 pass from the gradient forward's saved prompt keys and values (`continuation_logps`) gives the log-probs
    of a forward of its own over the same (prompt, mismatched completion) pairs (float64)."""
    tok, items = _items(toy_dir, pref)
    model = models.load_causal_lm(str(toy_dir / "model"), tok).double().eval()
    prompts = [p for p, _ in items]
    mismatched = [items[(i + 1) % len(items)][1][1] for i in range(len(items))]
    want = run_layout(SequenceLogprobs(model), build_layout(
        [(p, [c]) for p, c in zip(prompts, mismatched)], tok.pad_token_id, True), torch.device("cpu"))
    for packing in (False, True):
        lay = build_layout([(p, [cs[0]]) for p, cs in items], tok.pad_token_id, packing)
        saved: dict = {}
        run_layout(SequenceLogprobs(model), lay, torch.device("cpu"), save_kv=saved)
        got = continuation_logps(model, saved, lay, prompts, mismatched)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_dpo_learns_and_changes_every_parameter(toy_dir, pref, tmp_path):
    start = {k: v.clone() for k, v in models.load_causal_lm(str(toy_dir / "model")).state_dict().items()}
    small = write_jsonl(tmp_path / "small.jsonl", pref_rows(16))  # a few pairs, seen repeatedly
    out = dpo.train(cfg(toy_dir, small, tmp_path / "run", max_steps=12, micro_batch_size=8, beta=0.5,
                        learning_rate=3e-3, lr_scheduler="constant"))
    loss, acc = losses_of(out), losses_of(out, "rewards/accuracy")
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 0.1, loss
    assert sum(acc[-3:]) / 3 > sum(acc[:3]) / 3, acc
    keys = set(read_metrics(out)[0])
    assert set(dpo.METRIC_KEYS) <= keys
    end = models.load_causal_lm(str(out)).state_dict()
    unchanged = [k for k, v in start.items() if torch.equal(v, end[k])]
    assert not unchanged, unchanged


@pytest.mark.parametrize("loss", [t.value for t in LossType])
def test_every_loss_type_runs(toy_dir, pref, tmp_path, loss):
    out = dpo.train(cfg(toy_dir, pref, tmp_path / loss, loss=[loss]))
    vals = losses_of(out)
    assert len(vals) == 2 and all(math.isfinite(v) for v in vals)
    if loss == "kto":
        assert math.isfinite(read_metrics(out)[0]["kl/z0"])


def test_combined_losses_and_weights(toy_dir, pref, tmp_path):
    """sigmoid + 0.5 sft at step 0 (policy == reference): log 2 + 0.5 * mean token NLL of the chosen answers."""
    out = dpo.train(cfg(toy_dir, pref, tmp_path / "mix", loss=["sigmoid", "sft"], loss_weights=[1.0, 0.5],
                        max_steps=1))
    only_sft = dpo.train(cfg(toy_dir, pref, tmp_path / "sft", loss=["sft"], max_steps=1))
    assert abs(losses_of(out)[0] - (math.log(2) + 0.5 * losses_of(only_sft)[0])) < 1e-5


def test_kto_on_unpaired_data(toy_dir, pref, tmp_path):
    rows = [{"prompt": r["prompt"], "completion": c, "label": lab}
            for r in pref_rows(32) for c, lab in ((r["chosen"], True), (r["rejected"], False))]
    unpaired = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    out = dpo.train(cfg(toy_dir, unpaired, tmp_path / "kto", loss=["kto"], max_steps=6, micro_batch_size=8))
    m = read_metrics(out)
    # step 0: policy == reference, so z0 = 0 and every example's loss is lambda * (1 - sigmoid(0)) = 0.5. Only up to
    # fp32 rounding: the policy's and the reference's log-probs of a completion come from forwards over different
    # batches (matmuls may round a row differently with the batch's size), ~1 ulp of a sum of ~30.
    assert abs(m[0]["train/loss"] - 0.5) < 1e-6 and 0 <= m[0]["kl/z0"] < 1e-5
    assert all(math.isfinite(x["train/loss"]) for x in m)
    # paired data with loss kto is unpaired into the same examples: 2 per pair
    tok = models.load_tokenizer(str(toy_dir / "model"))
    ex = dpo.tokenise(cfg(toy_dir, pref, tmp_path / "x", loss=["kto"]), tok, pref_rows(5), {})
    assert [e.label for e in ex] == [True, False] * 5
    partner = mismatched_partners(10, seed=0)  # the KL completion comes from another example: a derangement
    assert sorted(partner) == list(range(10)) and all(p != i for i, p in enumerate(partner))
    comps = [e.completions[0] for e in ex]
    assert [e.completions[1] for e in ex] == [comps[p] for p in partner]


def test_reference_cache_hit_and_invalidation(toy_dir, pref, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    dpo.train(cfg(toy_dir, pref, tmp_path / "a", precompute_ref=True, ref_cache_dir=str(cache)))
    assert len(list(cache.glob("*.safetensors"))) == 1
    calls = []
    real = dpo.reference_logps
    monkeypatch.setattr(dpo, "reference_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    dpo.train(cfg(toy_dir, pref, tmp_path / "b", precompute_ref=True, ref_cache_dir=str(cache)))
    assert calls == []  # hit: no reference forward at all
    assert losses_of(tmp_path / "a") == losses_of(tmp_path / "b")
    changed = write_jsonl(tmp_path / "changed.jsonl", pref_rows(64, seed=1))
    dpo.train(cfg(toy_dir, changed, tmp_path / "c", precompute_ref=True, ref_cache_dir=str(cache)))
    assert calls and len(list(cache.glob("*.safetensors"))) == 2  # new data: miss, recomputed
    n_calls = len(calls)
    dpo.train(cfg(toy_dir, pref, tmp_path / "d", precompute_ref=True, ref_cache_dir=str(cache), max_length=40))
    assert len(calls) > n_calls  # new truncation: miss


@pytest.mark.parametrize("loss", [["simpo"], ["orpo"], ["sft"]])
def test_reference_free_variants_never_load_a_reference(toy_dir, pref, tmp_path, monkeypatch, loss):
    def boom(*a, **k):
        raise AssertionError("reference model loaded")

    monkeypatch.setattr(dpo, "load_reference", boom)
    monkeypatch.setattr(dpo, "reference_logps", boom)
    monkeypatch.setattr(dpo, "precompute_reference", boom)
    out = dpo.train(cfg(toy_dir, pref, tmp_path / "run", loss=loss, precompute_ref=True))
    m = read_metrics(out)[0]
    assert math.isfinite(m["train/loss"]) and m["kl/logratio_chosen"] == "nan"  # JSON has no NaN


@pytest.mark.parametrize("loss", [["sigmoid"], ["kto"]])
def test_batch_8_equals_batch_4_times_accumulation_2(toy_dir, pref, tmp_path, loss):
    lr = 1e-2 if loss == ["kto"] else 1e-3  # kto: moves the policy far enough for z0 to leave 0 by step 1
    a = dpo.train(cfg(toy_dir, pref, tmp_path / "a", loss=loss, max_steps=3, micro_batch_size=8, learning_rate=lr))
    b = dpo.train(cfg(toy_dir, pref, tmp_path / "b", loss=loss, max_steps=3, micro_batch_size=4,
                      gradient_accumulation_steps=2, learning_rate=lr))
    # (kto: batch 8 is one micro-batch, whose z0 pass reads the prompts' saved keys and values; 4 x 2 forwards them)
    for key in ("train/loss", "rewards/margin") + (("kl/z0",) if loss == ["kto"] else ()):
        torch.testing.assert_close(torch.tensor(losses_of(a, key)), torch.tensor(losses_of(b, key)), rtol=0, atol=1e-5)
    if loss == ["kto"]:
        assert max(losses_of(a, "kl/z0")) > 0  # z0 is not clamped to 0 at every step: the comparison means something


def test_resume_gives_identical_losses(toy_dir, pref, tmp_path):
    c = cfg(toy_dir, pref, tmp_path / "run", max_steps=4, save_every=2)
    dpo.train(c)
    full = losses_of(tmp_path / "run")
    c.resume = True
    dpo.train(c)
    resumed = losses_of(tmp_path / "run")
    assert len(resumed) == 4
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(full), rtol=0, atol=1e-6)


def test_config_is_checked():
    with pytest.raises(ValueError, match="not in"):
        dpo.Config(model="m", data="d", loss=["dpo"]).validate()
    with pytest.raises(ValueError, match="weights"):
        dpo.Config(model="m", data="d", loss=["sigmoid", "sft"], loss_weights=[1.0]).validate()
    with pytest.raises(ValueError, match="kto"):
        dpo.Config(model="m", data="d", loss=["kto", "sft"]).validate()
    with pytest.raises(ValueError, match="length_alpha"):  # R-DPO's term belongs to the sigmoid loss
        dpo.Config(model="m", data="d", loss=["ipo"], length_alpha=0.05).validate()
    with pytest.raises(ValueError, match="length_alpha"):
        dpo.Config(model="m", data="d", length_alpha=-0.1).validate()
    dpo.Config(model="m", data="d", loss=["sigmoid", "sft"], length_alpha=0.05).validate()


@pytest.mark.parametrize("bad, match", [({"loss": ["dpo"]}, "not in"), ({"beta": 0.0}, "beta must be > 0"),
                                        ({"micro_batch_size": 0}, "micro_batch_size")])
def test_train_checks_a_python_config_as_the_cli_does(toy_dir, pref, tmp_path, bad, match):
    """A Config built in Python and passed straight to dpo.train fails with the CLI's error (the CLI resolves its
    options through config.resolve, which runs the same checks), before any data, model or run directory is touched;
    `rlhfkit dpo` itself prints that message and exits 2."""
    fields = dict(model=str(toy_dir / "model"), data=str(pref), output_dir=str(tmp_path / "run"), **bad)
    with pytest.raises(ValueError, match=match) as from_cli:
        config_lib.resolve(dpo.Config, overrides=fields)
    with pytest.raises(ValueError, match=match) as from_python:
        dpo.train(dpo.Config(**fields))
    assert str(from_python.value) == str(from_cli.value)
    assert not (tmp_path / "run").exists()
    if bad == {"loss": ["dpo"]}:
        r = subprocess.run([sys.executable, "-m", "rlhfkit.cli.main", "dpo", "--model", fields["model"], "--data",
                            fields["data"], "--output-dir", fields["output_dir"], "--loss", "dpo"],
                           capture_output=True, text=True)
        assert r.returncode == 2 and str(from_python.value) in r.stderr, r.stderr


@pytest.mark.parametrize("layout", ["rows", "packed"])
def test_kto_two_processes_equal_one_process(toy_dir, pref, tmp_path, layout):
    """torchrun --nproc_per_node 2 (gloo), micro 4 each: every rank continues its own prompts' saved keys and values
    for z0 (rows) or forwards the mismatched pairs (packed: the GPU layout, taken here without the C kernels) and
    all-reduces the estimate, with the packed batch passed through DDP's forward; one process with micro 8 does the
    same in one piece. Same losses and z0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if layout == "packed":
        env["RLHFKIT_CPU_KERNEL"] = "0"

    def cmd(out, micro):
        return ["-m", "rlhfkit.cli.main", "dpo", "--model", str(toy_dir / "model"), "--data", str(pref), "--loss", "kto",
                "--output-dir", str(out), "--max-steps", "3", "--micro-batch-size", str(micro), "--max-length", "48",
                "--learning-rate", "1e-2", "--seed", "0", "--threads", "1", "--no-progress",
                "--ref-cache-dir", str(out) + "-cache"]

    subprocess.run([sys.executable, *cmd(tmp_path / "one", 8)], check=True, env=env, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29700 + os.getpid() % 1000), *cmd(tmp_path / "two", 4)], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    for key in ("train/loss", "rewards/margin", "kl/z0"):
        torch.testing.assert_close(torch.tensor(losses_of(tmp_path / "two", key)),
                                   torch.tensor(losses_of(tmp_path / "one", key)), rtol=0, atol=1e-5)
    assert max(losses_of(tmp_path / "one", "kl/z0")) > 0


@pytest.mark.parametrize("loss", [["sigmoid"], ["kto"]])
def test_packed_layout_trains_as_the_row_layout(toy_dir, pref, tmp_path, monkeypatch, loss):
    """The packed layout (what CUDA and a CPU without the compiled kernels run; `layout.use_packed`) gives the
    row layout's metrics over 3 steps, up to fp32 rounding: every log-prob, reward and KTO reference point."""
    dpo.train(cfg(toy_dir, pref, tmp_path / "rows", loss=loss, max_steps=3))
    monkeypatch.setattr(dpo, "use_packed", lambda model, device: True)
    dpo.train(cfg(toy_dir, pref, tmp_path / "packed", loss=loss, max_steps=3))
    rows, packed = read_metrics(tmp_path / "rows"), read_metrics(tmp_path / "packed")
    keys = ["train/loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "rewards/accuracy"]
    keys += ["kl/z0"] if loss == ["kto"] else []
    for a, b in zip(rows, packed):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    assert abs(packed[0]["logps/chosen"]) > 1  # real log-probs, not zeros
