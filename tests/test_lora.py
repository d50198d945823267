"""LoRA (`--lora-r`, through peft) on every trainer: only the adapters train and every one of them does; the reference
(the policy with its adapters off) is the base model exactly; saved adapters load in plain peft, merged models equal
the adapter models; the layout forwards and the fast decoder see the adapters; resume is exact; QLoRA says clearly
why it cannot run here."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import kill_when_checkpointed, toy_rows, write_jsonl
from test_dpo import pref_rows
from rlhfkit import data as data_lib
from rlhfkit.algorithms import dpo, grpo, lm_step, ppo, rm, sft
from rlhfkit.rollout import fastdecode
from rlhfkit import models
from rlhfkit.engine import TrainConfig, read_metrics
from rlhfkit.rollout.generate import _HFDecoder
from rlhfkit.models.layout import build_layout
from rlhfkit.models.logps import SequenceLogprobs, TokenLogprobs, padded_logps, run_layout
from rlhfkit.models.modeling import adapters_disabled, backbone, padding_free


@pytest.fixture(scope="module")
def pref(toy_dir):
    return write_jsonl(toy_dir / "lora_pref.jsonl", pref_rows(32))


@pytest.fixture(scope="module")
def prompts_file(toy_dir):
    return write_jsonl(toy_dir / "lora_prompts.jsonl", [{"prompt": r["prompt"]} for r in toy_rows(32)])


COMMON = dict(progress=False, seed=0, lr_scheduler="constant", threads=1, lora_r=4, lora_alpha=8.0)


def dpo_cfg(toy_dir, data, out, **kw):
    return dpo.Config(**{**COMMON, "model": str(toy_dir / "model"), "data": str(data), "output_dir": str(out),
                         "max_steps": 3, "micro_batch_size": 4, "max_length": 48, "learning_rate": 1e-2,
                         "ref_cache_dir": str(out) + "-cache", **kw})


def sft_cfg(toy_dir, out, **kw):
    return sft.Config(**{**COMMON, "model": str(toy_dir / "model"), "data": str(toy_dir / "sft.jsonl"),
                         "output_dir": str(out), "max_steps": 3, "micro_batch_size": 4, "max_length": 48,
                         "learning_rate": 1e-2, **kw})


def lora_model(toy_dir, r: int = 4, seed: int = 0, perturb: bool = True):
    """The toy model with adapters; `perturb`: B drawn at random, so the adapters change the outputs (B = 0 at
    initialisation makes them invisible)."""
    tok = models.load_tokenizer(str(toy_dir / "model"))
    cfg = TrainConfig(lora_r=r, lora_alpha=2.0 * r, seed=seed)
    model = models.apply_lora(models.load_causal_lm(str(toy_dir / "model"), tok), cfg, str(toy_dir / "model"))
    if perturb:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval(), tok


def base_key(name: str) -> str:
    """A peft state-dict key as the base model's own (the adapters' frozen weight sits in `base_layer`)."""
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


def batch(tok, n: int = 6):
    """Right-padded prompt + completion rows (ids, bool attention) of the toy task."""
    seqs = [data_lib.sft_example(tok, r, 64, {}).input_ids for r in toy_rows(n, seed=5)]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    att = torch.tensor([[True] * len(s) + [False] * (width - len(s)) for s in seqs])
    return ids, att


def logprobs(model, ids, att) -> torch.Tensor:
    with torch.no_grad():
        return TokenLogprobs(model)(ids, att.long(), att)["logprobs"]


def capture_saved(monkeypatch, module) -> dict:
    """Keep the model a trainer hands to models.save (its state dict, before anything is written)."""
    seen = {}
    real = models.save

    def save(model, *a, **k):
        seen["model"] = model
        seen["state"] = {k_: v.detach().clone() for k_, v in model.state_dict().items()}
        return real(model, *a, **k)

    monkeypatch.setattr(module.models, "save", save)
    return seen


# ----------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("trainer", ["sft", "dpo"])
def test_only_adapters_train_and_every_adapter_does(toy_dir, pref, tmp_path, monkeypatch, trainer):
    """After a few steps every frozen weight is bit-identical to the base model's and every LoRA tensor (A and B of
    every adapted layer) differs from its initial value; the checkpoint holds the adapters alone."""
    seen = capture_saved(monkeypatch, lm_step if trainer == "sft" else dpo)
    out = tmp_path / trainer
    if trainer == "sft":
        sft.train(sft_cfg(toy_dir, out, save_every=2))
    else:
        dpo.train(dpo_cfg(toy_dir, pref, out, save_every=2))
    base = models.load_causal_lm(str(toy_dir / "model")).state_dict()
    init = get_peft_model_state_dict(lora_model(toy_dir, perturb=False)[0])  # the same seed: the same A
    state = seen["state"]
    lora = {k: v for k, v in state.items() if "lora_" in k}
    frozen = {k: v for k, v in state.items() if "lora_" not in k}
    assert len(lora) == 2 * 7 * 2  # A and B of q, k, v, o, gate, up, down in 2 layers: all-linear, not lm_head
    assert all(torch.equal(v, base[base_key(k)]) for k, v in frozen.items())
    assert not [k for k, v in lora.items() if torch.equal(v, init[k.replace(".default", "")])]
    saved = load_file(str(out / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert saved and all("lora_" in k for k in saved), sorted(saved)[:5]


def test_reference_with_adapters_off_is_the_base_model_exactly(toy_dir, pref):
    """The reference of a LoRA run is the policy with its adapters disabled: its log-probs equal the base model's bit
    for bit, in the DPO layout (reference_logps) and in TokenLogprobs, while the adapters on give other numbers."""
    model, tok = lora_model(toy_dir)
    base = models.load_causal_lm(str(toy_dir / "model"), tok).eval()
    ids, att = batch(tok)
    with adapters_disabled(model):
        off = logprobs(model, ids, att)
    assert torch.equal(off, logprobs(base, ids, att))
    assert not torch.allclose(logprobs(model, ids, att), off, atol=1e-3)  # the adapters are really there
    c = dpo_cfg(toy_dir, pref, toy_dir / "unused")
    examples = dpo.tokenise(c, tok, pref_rows(8), {})
    args = (examples, list(range(8)), tok.pad_token_id, True, torch.device("cpu"),
            lambda: dpo.autocast_for("fp32", None))
    assert dpo.load_reference(c, tok, model) is model  # no second copy
    assert torch.equal(dpo.reference_logps(model, *args), dpo.reference_logps(base, *args))


@pytest.mark.parametrize("precompute", [False, True])
def test_dpo_step0_loss_is_log2(toy_dir, pref, tmp_path, precompute):
    """B = 0 at initialisation, so the LoRA policy is its reference at step 0: every log-ratio is 0 and the loss
    is log 2, on the fly and from the precomputed cache."""
    dpo.train(dpo_cfg(toy_dir, pref, tmp_path / "run", max_steps=2, precompute_ref=precompute))
    m = read_metrics(tmp_path / "run")
    assert abs(m[0]["train/loss"] - math.log(2)) < 1e-6 and abs(m[0]["kl/logratio_chosen"]) < 1e-5
    assert m[1]["train/loss"] != m[0]["train/loss"]


def test_layout_forwards_see_the_adapters(toy_dir, pref):
    """backbone() looks through the peft wrapper (whose own base_model_prefix names the causal LM, not its body),
    so the padding-free layout forwards patch and run the adapted decoder: the prompt-shared DPO layout equals
    plain padded rows (float64, sums of ~30 log-probs), and both differ from the base model's numbers."""
    model, tok = lora_model(toy_dir)
    body = backbone(model)
    assert type(body).__name__ == "LlamaModel" and padding_free(body)
    model = model.double()
    c = dpo_cfg(toy_dir, pref, toy_dir / "unused")
    items = [(e.prompt, list(e.completions)) for e in dpo.tokenise(c, tok, pref_rows(6, seed=2), {})]
    want = padded_logps(model, items, tok.pad_token_id)
    for packing in (False, True):
        lay = build_layout(items, tok.pad_token_id, packing)
        got = run_layout(SequenceLogprobs(model), lay, torch.device("cpu"))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)  # as tests/test_dpo.py's layout test
    with adapters_disabled(model):
        off = padded_logps(model, items, tok.pad_token_id)
    assert (want - off).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------- saving and loading
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # inside peft 0.18
def test_saved_adapter_loads_in_plain_peft_and_merges_to_the_same_model(toy_dir, tmp_path, monkeypatch):
    """The run dir is a standard peft adapter: transformers + peft.PeftModel.from_pretrained give the trained
    model's log-probs; rlhfkit's loaders take the directory as a model (merged); --merge writes a full model that
    plain transformers loads; `rlhfkit merge` writes the same."""
    seen = capture_saved(monkeypatch, lm_step)
    out = sft.train(sft_cfg(toy_dir, tmp_path / "run"))
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert not (out / "model.safetensors").exists()
    tok = models.load_tokenizer(str(out))  # the tokenizer travels with the adapter
    ids, att = batch(tok)
    trained = logprobs(seen["model"].eval(), ids, att)
    base = AutoModelForCausalLM.from_pretrained(str(toy_dir / "model"))
    plain = PeftModel.from_pretrained(base, str(out)).eval()
    # (plain transformers' forward against rlhfkit's fused CPU kernels: equal up to fp32 rounding)
    torch.testing.assert_close(logprobs(plain, ids, att), trained, rtol=0, atol=1e-5)
    merged = models.load_causal_lm(str(out), tok).eval()  # generate / eval / dpo read adapter dirs like this
    assert not models.is_lora(merged)
    torch.testing.assert_close(logprobs(merged, ids, att), trained, rtol=0, atol=1e-5)
    fresh = models.load_causal_lm(str(toy_dir / "model"), tok).eval()  # (`base` now carries the adapter)
    assert (logprobs(merged, ids, att) - logprobs(fresh, ids, att)).abs().max() > 1e-4  # training did something

    both = sft.train(sft_cfg(toy_dir, tmp_path / "merged", merge=True))
    assert (both / "model.safetensors").exists() and (both / "adapter" / "adapter_config.json").exists()
    full = AutoModelForCausalLM.from_pretrained(str(both)).eval()
    torch.testing.assert_close(logprobs(full, ids, att), trained, rtol=0, atol=1e-5)

    r = subprocess.run([sys.executable, "-m", "rlhfkit.cli.main", "merge", "--adapter", str(out), "--output-dir",
                        str(tmp_path / "cli")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    cli = AutoModelForCausalLM.from_pretrained(str(tmp_path / "cli")).eval()
    torch.testing.assert_close(logprobs(cli, ids, att), trained, rtol=0, atol=1e-5)
    assert json.loads((tmp_path / "cli" / "rlhfkit.json").read_text())["stage"] == "sft"


def test_dpo_from_an_sft_adapter_uses_the_merged_sft_model_as_reference(toy_dir, pref, tmp_path):
    """A later stage takes an adapter directory as its model: DPO (LoRA again) on top of an SFT LoRA run starts at
    loss log 2, so its reference is the SFT model (base + SFT adapter), and its adapter names the SFT run as base."""
    sft_out = sft.train(sft_cfg(toy_dir, tmp_path / "sft"))
    out = dpo.train(dpo_cfg(toy_dir, pref, tmp_path / "dpo", model=str(sft_out), max_steps=1))
    assert abs(read_metrics(out)[0]["train/loss"] - math.log(2)) < 1e-6
    assert models.adapter_base(out) == str(sft_out.resolve())
    tok = models.load_tokenizer(str(out))
    ids, att = batch(tok)
    chained = models.load_causal_lm(str(out), tok).eval()  # base + SFT adapter + DPO adapter, merged
    assert torch.isfinite(logprobs(chained, ids, att)).all()


def test_fast_decoder_reads_the_adapters(toy_dir):
    """The sampler's decode-only forward (fastdecode) covers a LoRA policy: its logits equal the peft model's through
    the transformers forward, with the adapters on and off."""
    model, tok = lora_model(toy_dir)
    prompts = [data_lib.encode_prompt(tok, r["prompt"]) for r in toy_rows(3, seed=5)]
    left, latt = data_lib.pad_left([p[i:] for i, p in enumerate(prompts)], tok.pad_token_id)  # different lengths
    dec = fastdecode.for_model(model)
    assert dec is not None
    for ctx in (lambda: torch.no_grad(), lambda: adapters_disabled(model)):
        with ctx(), torch.no_grad():
            want = _HFDecoder(model).start(left, latt, 4)
            got = dec.start(left, latt, 4)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    with torch.no_grad():
        on = dec.start(left, latt, 4)
        with adapters_disabled(model):
            off = dec.start(left, latt, 4)
    assert (on - off).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------- the other trainers
def test_resume_is_exact(toy_dir, pref, tmp_path):
    """A LoRA checkpoint holds the adapters (and AdamW's state for them): resuming from step 2 gives the losses of
    the uninterrupted run."""
    c = dpo_cfg(toy_dir, pref, tmp_path / "run", max_steps=4, save_every=2)
    dpo.train(c)
    full = [m["train/loss"] for m in read_metrics(tmp_path / "run")]
    c.resume = True
    dpo.train(c)
    resumed = [m["train/loss"] for m in read_metrics(tmp_path / "run")]
    assert len(resumed) == 4 and len(set(full)) == 4
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(full), rtol=0, atol=1e-6)


def test_kill9_then_resume_gives_identical_losses(toy_dir, tmp_path):
    """As tests/test_engine.py's kill -9 test, under LoRA: an SFT run killed after a random checkpoint and resumed
    logs every step once, with the uninterrupted run's losses bit for bit (checkpoints hold adapters only)."""
    steps = 200

    def cmd(out, *extra):
        return [sys.executable, "-m", "rlhfkit.cli.main", "sft", "--model", str(toy_dir / "model"), "--data",
                str(toy_dir / "sft.jsonl"), "--output-dir", str(out), "--no-progress", "--learning-rate", "3e-3",
                "--micro-batch-size", "4", "--max-steps", str(steps), "--save-every", "10", "--threads", "1",
                "--lora-r", "4", *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd(tmp_path / "full"), check=True, env=env, capture_output=True)
    ref = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / "full")}
    kill_after = random.Random().randrange(20, 80, 10)
    proc = subprocess.Popen(cmd(tmp_path / "crash"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when_checkpointed(proc, tmp_path / "crash" / "checkpoints", kill_after)
    assert not models.is_adapter_dir(tmp_path / "crash")  # it really died mid-run
    subprocess.run(cmd(tmp_path / "crash", "--resume"), check=True, env=env, capture_output=True)
    got = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / "crash")}
    assert sorted(got) == list(range(1, steps + 1)) and got == ref


def has_number(prompts, responses):
    return [float(any(ch.isdigit() for ch in r)) for r in responses]


def test_grpo_smoke_reference_and_resume(toy_dir, prompts_file, tmp_path):
    """GRPO with beta > 0: the reference is the policy with its adapters off, so the KL starts at 0 (B = 0) and then
    moves (with the adapters on, the "reference" would follow the policy and the KL stay 0); a run resumed from its
    step-2 checkpoint gives the same losses and rollouts."""
    kw = dict(model=str(toy_dir / "model"), data=str(prompts_file), max_steps=4, rollout_batch_size=2,
              num_generations=4, micro_batch_size=8, max_new_tokens=6, learning_rate=5e-2, beta=0.1, save_every=2,
              num_iterations=2, **COMMON)
    grpo.train(grpo.Config(output_dir=str(tmp_path / "full"), **kw), reward_fn=has_number)
    full = read_metrics(tmp_path / "full")
    assert abs(full[0]["kl/seq"]) < 1e-5 and full[-1]["kl/token"] > 1e-4
    assert models.is_adapter_dir(tmp_path / "full")
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000002", part / "checkpoints" / "step-00000002")
    grpo.train(grpo.Config(output_dir=str(part), resume=True, **kw), reward_fn=has_number)
    for a, b in zip(full[2:], read_metrics(part)):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5, abs=1e-7)
        assert a["rollout/score"] == b["rollout/score"]


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_ppo_smoke(toy_dir, prompts_file, tmp_path, critic):
    """PPO under LoRA: step-0 ratio 1 and KL 0 (reference = adapters off), finite losses; the separate critic's
    frozen weights are the policy's own tensors, and its value head trains."""
    cfg = ppo.Config(model=str(toy_dir / "model"), data=str(prompts_file), output_dir=str(tmp_path / critic),
                     max_steps=4, rollout_batch_size=4, num_minibatches=2, micro_batch_size=2, ppo_epochs=2,
                     max_new_tokens=6, learning_rate=1e-2, critic=critic, **COMMON)
    ppo.train(cfg, reward_fn=lambda p, r: [len(x) / 10 for x in r])
    m = read_metrics(tmp_path / critic)
    assert m[0]["policy/ratio"] == 1.0 and m[0]["kl/seq"] == 0.0
    assert all(math.isfinite(x["train/loss"]) and math.isfinite(x["value/loss"]) for x in m)
    if critic == "separate":
        tok = models.load_tokenizer(str(toy_dir / "model"))
        policy = models.load_causal_lm(str(toy_dir / "model"), tok)
        value = ppo.build_value(cfg, policy, tok)
        ptrs = {p.data_ptr() for p in policy.parameters()}
        frozen = [p for p in value.parameters() if not p.requires_grad]
        assert frozen and all(p.data_ptr() in ptrs for p in frozen)  # no second copy of the weights
        assert value.head.weight.requires_grad


def test_reward_model_head_trains_and_the_adapter_reloads(toy_dir, pref, tmp_path, monkeypatch):
    """rm under LoRA: the score head trains whole (modules_to_save) beside the adapters; the saved adapter directory
    loads as a reward model (merged) with the trained model's scores."""
    from rlhfkit.models import rewards

    seen = capture_saved(monkeypatch, rm)
    cfg = rm.Config(model=str(toy_dir / "model"), data=str(pref), output_dir=str(tmp_path / "rm"), max_steps=3,
                    micro_batch_size=4, max_length=48, learning_rate=1e-2, normalize=False, **COMMON)
    out = rm.train(cfg)
    trained = seen["model"].eval()
    head = [k for k, p in trained.named_parameters() if p.requires_grad and "lora_" not in k]
    assert head and all("score" in k for k in head)
    assert rewards.is_last_token_model(trained)
    tok = models.load_tokenizer(str(out))
    ids, att = batch(tok)
    with torch.no_grad():
        want = rewards.forward_scores(trained, ids, att)
        got = rewards.forward_scores(models.load_sequence_classifier(str(out), tok).eval(), ids, att)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert rm.is_classifier(str(out))


def test_gradient_checkpointing_with_frozen_weights(toy_dir, tmp_path):
    """--gradient-checkpointing under LoRA, where no input of a checkpointed layer requires grad but the adapters
    inside it do: the same losses as without it (a reentrant checkpoint would give the adapters no gradient)."""
    runs = [[m["train/loss"] for m in read_metrics(sft.train(sft_cfg(toy_dir, tmp_path / str(gc),
                                                                     gradient_checkpointing=gc)))]
            for gc in (False, True)]
    assert runs[0] == pytest.approx(runs[1], rel=1e-5) and len(set(runs[0])) == 3


# ----------------------------------------------------------------------------------------------- checks
def test_qlora_without_cuda_is_one_clear_line(toy_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error under test is the one without it")
    r = subprocess.run([sys.executable, "-m", "rlhfkit.cli.main", "sft", "--model", str(toy_dir / "model"), "--data",
                        str(toy_dir / "sft.jsonl"), "--output-dir", str(tmp_path / "q"), "--lora-r", "4",
                        "--load-in-4bit", "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == ["error: load_in_4bit: QLoRA's 4-bit weights need a CUDA GPU, and "
                                             "there is none here"]


def test_config_checks():
    for bad in (dict(lora_r=-1), dict(lora_r=4, lora_alpha=0), dict(lora_r=4, lora_dropout=1.0),
                dict(lora_r=4, lora_target_modules=[]), dict(merge=True), dict(load_in_4bit=True)):
        with pytest.raises(ValueError):
            TrainConfig(**bad).validate()
    TrainConfig(lora_r=4, merge=True, lora_target_modules=["q_proj", "v_proj"]).validate()
    with pytest.raises(ValueError, match="lora_dropout"):
        grpo.Config(model="m", data="d", lora_r=4, lora_dropout=0.1).validate()
