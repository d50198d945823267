"""GRPO / RLOO: a verifiable reward improves, on-policy ratio is exactly 1, every parameter trains, resume equality."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.algorithms import grpo
from rlhfkit.engine import read_metrics


def has_number(prompts, responses):
    """Verifiable 0/1 reward on the toy arithmetic task: the response states a number."""
    return [float(any(c.isdigit() for c in r)) for r in responses]


@pytest.fixture(scope="module")
def prompts_file(toy_dir):
    rows = [json.loads(x) for x in (toy_dir / "sft.jsonl").read_text().splitlines()]
    return write_jsonl(toy_dir / "grpo_prompts.jsonl", [{"prompt": r["prompt"]} for r in rows])


def cfg_for(toy_dir, prompts_file, out, **kw):
    base = dict(model=str(toy_dir / "model"), data=str(prompts_file), output_dir=str(out), max_steps=2,
                rollout_batch_size=2, num_generations=4, micro_batch_size=4, gradient_accumulation_steps=2,
                max_new_tokens=6, learning_rate=1e-2, beta=0.0, progress=False, lr_scheduler="constant", threads=1)
    base.update(kw)
    return grpo.Config(**base)


def test_grpo_improves_verifiable_reward(toy_dir, prompts_file, tmp_path):
    cfg = cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=20, rollout_batch_size=4,
                  micro_batch_size=16, gradient_accumulation_steps=1, max_new_tokens=8)
    grpo.train(cfg, reward_fn=has_number)
    scores = [m["rollout/score"] for m in read_metrics(tmp_path / "run")]
    assert sum(scores[-4:]) / 4 > sum(scores[:4]) / 4 + 0.15, scores


def test_on_policy_ratio_is_exactly_one_and_kl_starts_at_zero(toy_dir, prompts_file, tmp_path):
    cfg = cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=3, beta=0.1, temperature=0.8)
    grpo.train(cfg, reward_fn=has_number)
    ms = read_metrics(tmp_path / "run")
    assert all(m["policy/ratio"] == 1.0 and m["policy/clipfrac"] == 0.0 for m in ms)
    assert ms[0]["kl/seq"] == 0.0 and ms[0]["kl/token"] == 0.0  # reference == initial policy
    assert ms[-1]["kl/token"] > 0


@pytest.mark.parametrize("trainer", ["grpo", "rloo"])
def test_smoke_every_param_changes_and_resume_is_exact(toy_dir, prompts_file, tmp_path, trainer):
    """Off-policy path too: num_iterations 2 recomputes old log-probs at rollout time; beta > 0 loads a reference."""
    from safetensors.torch import load_file

    entry = grpo.train if trainer == "grpo" else grpo.train_rloo
    kw = dict(num_iterations=2, beta=0.05, save_every=2)
    entry(cfg_for(toy_dir, prompts_file, tmp_path / "full", max_steps=4, **kw), reward_fn=has_number)
    m_full = read_metrics(tmp_path / "full")
    assert len(m_full) == 4 and all(torch.isfinite(torch.tensor(m["train/loss"])) for m in m_full)
    assert m_full[1]["policy/ratio"] != 1.0  # the second pass over the rollout is off-policy
    init = load_file(str(toy_dir / "model" / "model.safetensors"))
    ckpt = load_file(str(tmp_path / "full" / "checkpoints" / "step-00000002" / "model.safetensors"))
    for name, t in init.items():
        key = "model." + ("lm_head.weight" if name == "model.embed_tokens.weight" else name)  # tied: saved once
        assert not torch.equal(ckpt[key], t), f"{name} did not change"
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000002", part / "checkpoints" / "step-00000002")
    entry(cfg_for(toy_dir, prompts_file, part, max_steps=4, resume=True, **kw), reward_fn=has_number)
    m_part = read_metrics(part)
    assert [m["step"] for m in m_part] == [3, 4]
    for a, b in zip(m_full[2:], m_part):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5, abs=1e-7)
        assert a["rollout/score"] == b["rollout/score"]


def test_dr_grpo_variant_runs(toy_dir, prompts_file, tmp_path):
    cfg = cfg_for(toy_dir, prompts_file, tmp_path / "run", scale_rewards=False, aggregation="seq_mean_token_sum")
    grpo.train(cfg, reward_fn=has_number)
    assert all(torch.isfinite(torch.tensor(m["train/loss"])) for m in read_metrics(tmp_path / "run"))


def test_bench_batch_semantics(toy_dir, prompts_file, tmp_path):
    o = grpo.bench_batch_overrides(8)
    assert o["rollout_batch_size"] * o["num_generations"] == 8 and o["micro_batch_size"] == 8
    cfg_for(toy_dir, prompts_file, tmp_path, **o).validate()
    with pytest.raises(ValueError, match="multiple of 4"):
        grpo.bench_batch_overrides(6)
    with pytest.raises(ValueError, match="rollout_batch_size"):
        cfg_for(toy_dir, prompts_file, tmp_path, gradient_accumulation_steps=1).validate()
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        cfg_for(toy_dir, prompts_file, tmp_path, num_generations=1, micro_batch_size=1).validate()


def test_shared_prompt_forward_equals_padded_rows(toy_dir, prompts_file, tmp_path):
    """share_prompt forwards each prompt once for its G completions (layout.rows_layout) in the update and the
    reference forward: the same training as padded rows, up to float reassociation."""
    kw = dict(max_steps=3, beta=0.1, num_iterations=2)
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "shared", **kw), reward_fn=has_number)
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "padded", share_prompt=False, **kw), reward_fn=has_number)
    a, b = read_metrics(tmp_path / "shared"), read_metrics(tmp_path / "padded")
    for key in ("train/loss", "policy/entropy", "kl/token", "rollout/score"):
        assert [m[key] for m in a] == pytest.approx([m[key] for m in b], rel=1e-4, abs=1e-6), key


# ------------------------------------------------------------------- DAPO, GSPO, CISPO, REINFORCE++, entropy
def _finite(ms, key="train/loss"):
    return all(torch.isfinite(torch.tensor(m[key])) for m in ms)


@pytest.mark.parametrize("flags,keys", [
    (dict(epsilon_low=0.2, epsilon_high=0.28), ()),  # DAPO clip-higher
    (dict(importance_sampling_level="sequence", epsilon_low=3e-4, epsilon_high=4e-4, aggregation="seq_mean"), ()),
    (dict(policy_loss="cispo", epsilon_high=0.28), ("policy/is_weight",)),  # truncated importance weights
])
def test_off_policy_loss_flags(toy_dir, prompts_file, tmp_path, flags, keys):
    """Two passes over each rollout: the second is off-policy against the rollout-time log-probs, so the ratio
    leaves 1 and each flag's clipping / truncation is exercised; the loss stays finite and the keys are logged."""
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=4, num_iterations=2, beta=0.05, **flags),
               reward_fn=has_number)
    ms = read_metrics(tmp_path / "run")
    assert len(ms) == 4 and _finite(ms) and ms[1]["policy/ratio"] != 1.0
    for key in ("policy/clipfrac", "policy/entropy", "kl/token", *keys):
        assert all(key in m for m in ms), key
    if "policy/is_weight" in keys:
        assert ms[0]["policy/is_weight"] == 1.0  # on-policy first pass: every weight is exactly 1
        assert all(m["policy/is_weight"] <= 1.28 + 1e-6 for m in ms)


def test_sequence_level_clips_whole_sequences(toy_dir, prompts_file, tmp_path):
    """GSPO's ratio is one number per sequence, so a clipped token means a clipped sequence: with the paper's tiny
    clip range the clip fraction of the off-policy pass is a fraction of whole rows' tokens and is > 0."""
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=2, num_iterations=2,
                       importance_sampling_level="sequence", epsilon_low=3e-4, epsilon_high=4e-4),
               reward_fn=has_number)
    ms = read_metrics(tmp_path / "run")
    assert ms[0]["policy/clipfrac"] == 0.0 and ms[1]["policy/clipfrac"] > 0


def test_entropy_bonus_enters_the_loss_and_reaches_the_monitor(toy_dir, prompts_file, tmp_path):
    """On-policy with beta 0: train/loss = policy/loss - entropy_coef x policy/entropy exactly (both token means
    over the same tokens); the monitor records the entropy of the step before each evaluation."""
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=3, entropy_coef=0.1,
                       monitor_prompts=str(prompts_file), monitor_every=1, monitor_n=2), reward_fn=has_number)
    ms = read_metrics(tmp_path / "run")
    for m in ms:
        assert m["train/loss"] == pytest.approx(m["policy/loss"] - 0.1 * m["policy/entropy"], rel=1e-5, abs=1e-7)
        assert m["policy/entropy"] > 0
    recs = [json.loads(x) for x in (tmp_path / "run" / "monitor.jsonl").read_text().splitlines()]
    assert "entropy" not in recs[0] and recs[1]["entropy"] == pytest.approx(ms[0]["policy/entropy"], rel=1e-12)


def prompt_dependent(prompts, responses):
    """Equal rewards for every completion of a prompt whose first number is even (a zero-signal group), a
    length-dependent reward otherwise."""
    first = [int(next(c for c in p if c.isdigit())) for p in prompts]
    return [1.0 if f % 2 == 0 else float(len(r) % 3) for f, r in zip(first, responses)]


def test_dynamic_sampling_refills_and_counts(toy_dir, prompts_file, tmp_path):
    """DAPO dynamic sampling: zero-signal groups are counted and replaced by extra generations (a multiple of G);
    every group used for an update with a refill has signal, unless the rounds ran out."""
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "run", max_steps=4, dynamic_sampling=True,
                       max_sampling_rounds=4), reward_fn=prompt_dependent)
    ms = read_metrics(tmp_path / "run")
    assert _finite(ms) and all("rollout/extra_generations" in m and "rollout/zero_signal_groups" in m for m in ms)
    assert sum(m["rollout/zero_signal_groups"] for m in ms) > 0
    assert sum(m["rollout/extra_generations"] for m in ms) > 0
    assert all(m["rollout/extra_generations"] % 4 == 0 for m in ms)  # whole rollouts of 2 prompts x 4
    for m in ms:
        if m["rollout/zero_signal_groups"] and m["rollout/sampling_rounds"] < 4:
            assert m["rollout/frac_zero_std"] == 0.0


def test_overlong_shaping_and_truncation_mask(toy_dir, prompts_file, tmp_path):
    """Overlong punishment over the last 3 of 6 tokens: a penalty in [-1, 0] is logged; truncated completions are
    left out of the loss. The toy model never says EOS in 6 tokens, so every token is masked out: the update's
    token statistics (entropy) are 0 where without the mask they are > 0, and the loss stays finite."""
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "run", overlong_buffer=3, mask_truncated_completions=True),
               reward_fn=has_number)
    ms = read_metrics(tmp_path / "run")
    assert _finite(ms) and all(-1.0 <= m["rollout/overlong_penalty"] <= 0.0 for m in ms)
    assert all(m["rollout/eos_fraction"] == 0.0 and m["policy/entropy"] == 0.0 for m in ms)
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "unmasked", overlong_buffer=3), reward_fn=has_number)
    assert all(m["policy/entropy"] > 0 for m in read_metrics(tmp_path / "unmasked"))


@pytest.mark.parametrize("kw", [dict(), dict(group_baseline=False, num_generations=1, micro_batch_size=1)])
def test_reinforce_pp_runs(toy_dir, prompts_file, tmp_path, kw):
    """REINFORCE++ (-baseline by default; plain with one sample per prompt): KL in the reward, no KL loss term, so
    with beta > 0 the KL is logged but train/loss == policy/loss."""
    from rlhfkit import reinforce_pp

    base = dict(model=str(toy_dir / "model"), data=str(prompts_file), output_dir=str(tmp_path / "run"), max_steps=2,
                rollout_batch_size=2, num_generations=4, micro_batch_size=4, gradient_accumulation_steps=2,
                max_new_tokens=6, learning_rate=1e-2, beta=0.05, progress=False, lr_scheduler="constant", threads=1)
    base.update(kw)
    reinforce_pp.train(reinforce_pp.Config(**base), reward_fn=has_number)
    ms = read_metrics(tmp_path / "run")
    assert len(ms) == 2 and _finite(ms) and all("kl/seq" in m for m in ms)
    assert all(m["train/loss"] == m["policy/loss"] for m in ms)


def test_new_flags_are_validated_and_parsed(toy_dir, prompts_file, tmp_path):
    from rlhfkit import config as config_lib
    from rlhfkit import reinforce_pp

    base = dict(model=str(toy_dir / "model"), data=str(prompts_file), rollout_batch_size="2", micro_batch_size="4",
                gradient_accumulation_steps="2", max_new_tokens="6")
    cfg = config_lib.resolve(grpo.Config, None, {**base, "epsilon_low": "0.2", "epsilon_high": "0.28",
                                                 "importance_sampling_level": "sequence"})
    assert (cfg.epsilon_low, cfg.epsilon_high, cfg.importance_sampling_level) == (0.2, 0.28, "sequence")
    assert config_lib.resolve(grpo.Config, None, {**base, "epsilon_high": "none"}).epsilon_high is None
    for bad, match in [(dict(importance_sampling_level="seq"), "importance_sampling_level"),
                       (dict(policy_loss="cispo", importance_sampling_level="sequence"), "cispo"),
                       (dict(policy_loss="gspo"), "policy_loss"), (dict(overlong_buffer=7), "overlong_buffer"),
                       (dict(epsilon_low=1.0), "epsilon_low"), (dict(entropy_coef=-0.1), "entropy_coef")]:
        with pytest.raises(ValueError, match=match):
            cfg_for(toy_dir, prompts_file, tmp_path, **bad).validate()
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        reinforce_pp.Config(**{**cfg_for(toy_dir, prompts_file, tmp_path).__dict__, "num_generations": 1,
                               "micro_batch_size": 1}).validate()
    reinforce_pp.Config(**{**cfg_for(toy_dir, prompts_file, tmp_path).__dict__, "num_generations": 1,
                           "micro_batch_size": 1, "group_baseline": False}).validate()


def test_concat_rollouts_pads_to_the_widest():
    """Rows chosen from rollouts of different widths: right-padded with pad / False / 0, in the order given."""
    from rlhfkit.rollout.episodes import Rollout, concat_rollouts

    def ro(T, base):
        B = 2
        ids = torch.arange(B * T).view(B, T) + base
        return Rollout(prompts=[f"p{base}{i}" for i in range(B)], texts=[f"t{base}{i}" for i in range(B)],
                       input_ids=ids, attention=torch.ones(B, T, dtype=torch.bool),
                       response_mask=torch.ones(B, T, dtype=torch.bool), logprobs=-torch.ones(B, T - 1),
                       scores=torch.tensor([1.0, 2.0]) + base, has_eos=torch.tensor([True, False]),
                       ref_logprobs=-2 * torch.ones(B, T - 1), reward_parts={"std": torch.tensor([0.1, 0.2])},
                       gen_s=1.5)

    a, b = ro(3, 0), ro(5, 100)
    c = concat_rollouts([(a, torch.tensor([1])), (b, torch.tensor([0, 1]))], pad_id=-7)
    assert c.input_ids.tolist() == [[3, 4, 5, -7, -7], [100, 101, 102, 103, 104], [105, 106, 107, 108, 109]]
    assert c.attention.tolist()[0] == [True, True, True, False, False] and c.mask.shape == (3, 4)
    assert c.logprobs.tolist()[0] == [-1.0, -1.0, 0.0, 0.0] and c.ref_logprobs.tolist()[0] == [-2.0, -2.0, 0.0, 0.0]
    assert c.scores.tolist() == [2.0, 101.0, 102.0] and c.has_eos.tolist() == [False, True, False]
    assert c.prompts == ["p01", "p1000", "p1001"] and c.texts == ["t01", "t1000", "t1001"]
    assert c.reward_parts["std"].tolist() == pytest.approx([0.2, 0.1, 0.2]) and c.gen_s == 3.0


def test_gspo_equals_grpo_through_the_trainer_on_one_token_completions(toy_dir, prompts_file, tmp_path):
    """max_new_tokens 1: every completion is one token, so the sequence ratio is the token ratio and the two levels
    train identically, off-policy pass included (the identity of test_losses, end to end)."""
    kw = dict(max_steps=4, num_iterations=2, max_new_tokens=1, beta=0.05, epsilon_high=0.28)
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "tok", **kw), reward_fn=prompt_dependent)
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "seq", importance_sampling_level="sequence", **kw),
               reward_fn=prompt_dependent)
    a, b = read_metrics(tmp_path / "tok"), read_metrics(tmp_path / "seq")
    assert a[1]["policy/ratio"] != 1.0
    for key in ("train/loss", "policy/clipfrac", "policy/ratio", "kl/token"):
        assert [m[key] for m in a] == pytest.approx([m[key] for m in b], rel=1e-6, abs=1e-9), key


def test_dynamic_sampling_resume_is_exact(toy_dir, prompts_file, tmp_path):
    """The refill prompts and samples come from (seed, iteration, process, round): a run resumed from a checkpoint
    draws the same extra rollouts and trains the same."""
    kw = dict(max_steps=4, num_iterations=2, save_every=2, dynamic_sampling=True, max_sampling_rounds=2)
    grpo.train(cfg_for(toy_dir, prompts_file, tmp_path / "full", **kw), reward_fn=prompt_dependent)
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000002", part / "checkpoints" / "step-00000002")
    grpo.train(cfg_for(toy_dir, prompts_file, part, resume=True, **kw), reward_fn=prompt_dependent)
    full, resumed = read_metrics(tmp_path / "full")[2:], read_metrics(part)
    assert [m["step"] for m in resumed] == [3, 4] and full[0]["rollout/extra_generations"] > 0
    for a, b in zip(full, resumed):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5, abs=1e-7)
        assert (a["rollout/score"], a["rollout/extra_generations"]) == (b["rollout/score"],
                                                                       b["rollout/extra_generations"])


def test_kl_coef_is_the_name_and_beta_a_deprecated_alias(tmp_path):
    """GRPO / RLOO / REINFORCE++ call the KL weight kl_coef, like PPO; `beta` still works from Python, YAML and the
    command line, says it is deprecated, and may not be given together with kl_coef."""
    import warnings

    from click.testing import CliRunner

    import rlhfkit
    from rlhfkit import config as config_lib
    from rlhfkit.cli.main import app

    base = {"model": "m", "data": "d"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert grpo.Config(**base, kl_coef=0.1).kl_coef == 0.1
    for cls in (grpo.Config, rlhfkit.reinforce_pp.Config):
        with pytest.warns(FutureWarning, match="'beta' is deprecated, use 'kl_coef'"):
            cfg = cls(**base, beta=0.2)
        assert cfg.kl_coef == 0.2 and "beta" not in cfg.__dataclass_fields__
        with pytest.warns(FutureWarning, match="beta is deprecated"):
            assert cfg.beta == 0.2
    with pytest.raises(config_lib.ConfigError, match="old name of 'kl_coef'"):
        grpo.Config(**base, beta=0.2, kl_coef=0.1)
    (tmp_path / "c.yaml").write_text("beta: 0.3\n")
    with pytest.warns(FutureWarning, match="'beta' is deprecated"):
        assert config_lib.resolve(grpo.Config, tmp_path / "c.yaml", base).kl_coef == 0.3
    # --beta parses (and warns); the run then stops at validation, which proves the flag reached the config
    with pytest.warns(FutureWarning, match="'beta' is deprecated"):
        res = CliRunner().invoke(app, ["grpo", "--model", "m", "--data", "d", "--beta", "0.3", "--temperature", "0"])
    assert res.exit_code != 0 and "temperature must be > 0" in res.output and "No such option" not in res.output


@pytest.mark.parametrize("entry", ["grpo", "rloo", "reinforce_pp"])
def test_train_validates_its_config_from_python(toy_dir, prompts_file, tmp_path, entry):
    """A Config built in Python (no resolve) is validated by train() itself, before any model loads."""
    import rlhfkit

    fn, cls = {"grpo": (grpo.train, grpo.Config), "rloo": (grpo.train_rloo, grpo.Config),
               "reinforce_pp": (rlhfkit.reinforce_pp.train, rlhfkit.reinforce_pp.Config)}[entry]
    base = {**cfg_for(toy_dir, prompts_file, tmp_path / "run").__dict__}
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        fn(cls(**{**base, "num_generations": 1, "micro_batch_size": 1}), reward_fn=has_number)
    with pytest.raises(ValueError, match="monitor_patience must be >= 1"):
        fn(cls(**{**base, "monitor_patience": 0}), reward_fn=has_number)
    assert not (tmp_path / "run" / "config.yaml").exists()
