"""`rlhfkit eval` and evaluate_policy on a tiny model, and the world's gold path on known responses."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import write_jsonl
from rlhfkit import data as data_lib
from rlhfkit.diagnostics import evaluate as E


def words_reward(prompts, responses):
    return {"score": torch.tensor([float(len(r.split())) for r in responses]),
            "std": torch.ones(len(responses))}


def words_list_reward(prompts, responses):
    """The `module:function` signature of rlhfkit.models.rewards: text prompts and responses -> list of floats."""
    return [float(len(r.split())) for r in responses]


def text_reward(prompts, responses):
    """A plain function written for text prompts (like the world's gold): retried with user-message text."""
    return [1.0 if "plus" in p.lower() else 0.0 for p in prompts]  # AttributeError on a message list


@pytest.fixture(scope="module")
def tiny(toy_dir):
    from rlhfkit import models

    tok = models.load_tokenizer(str(toy_dir / "tok"))
    return tok, models.load_causal_lm(str(toy_dir / "model"), tok)


def _rows(toy_dir, n=6):
    rows = [json.loads(x) for x in (toy_dir / "sft.jsonl").read_text().splitlines()][:n]
    return [{"prompt": r["prompt"], "category": "even" if i % 2 == 0 else "odd"} for i, r in enumerate(rows)]


def test_evaluate_policy_tiny(toy_dir, tiny):
    tok, model = tiny
    rows = _rows(toy_dir)
    res = E.evaluate_policy(model, tok, rows, judges={"rm": words_reward, "txt": text_reward}, ref_model=model,
                            max_new_tokens=8, temperature=1.0, seed=0)
    assert res["n"] == 6 and len(res["samples"]) == 6
    assert res["kl_to_sft"] == 0.0 and res["kl_k3"] == 0.0  # the policy is its own reference
    assert res["judges"]["txt"]["mean"] == 1.0
    assert res["proxy"] == res["judges"]["rm"]["mean"] and res["disagreement"] == 1.0
    assert res["proxy"] == pytest.approx(sum(len(s["response"].split()) for s in res["samples"]) / 6)
    assert 0 < res["mean_length"] <= 8
    assert set(res["by_kind"]) == {"even", "odd"} and res["by_kind"]["even"]["n"] == 3
    assert "gold" not in res  # no gold judge, not the world
    # the same seed gives the same samples; a win rate against itself is exactly one half (all ties)
    res2 = E.evaluate_policy(model, tok, rows, judges={"rm": words_reward}, reference={"first": res},
                             max_new_tokens=8, temperature=1.0, seed=0)
    assert [s["response"] for s in res2["samples"]] == [s["response"] for s in res["samples"]]
    assert res2["win_rate_vs_first"]["mean"] == 0.5 and res2["win_rate_vs_first"]["ties"] == 6
    greedy = E.evaluate_policy(model, tok, rows, judges={}, ref_model=model, max_new_tokens=8, temperature=0)
    assert "kl_to_sft" not in greedy  # no Monte-Carlo KL without samples from the policy
    itself = E.evaluate_policy(model, tok, rows, judges={}, ref_model=model, max_new_tokens=8, temperature=1.0)
    assert itself["kl_to_sft"] == 0.0 and all(s["logp"] == s["ref_logp"] for s in itself["samples"])


def test_sequence_logps_match_sampler(tiny):
    """TokenLogprobs' sum over the sampled tokens equals the sampler's own log-probs: temperature-consistent."""
    tok, model = tiny
    prompts = [[{"role": "user", "content": "What is 1 plus 2?"}], [{"role": "user", "content": "What is 3?"}]]
    p_ids, r_ids, _, _ = E.sample_responses(model, tok, prompts, 6, 0.7, seed=1)
    lp = E.sequence_logps(model, p_ids, r_ids, tok.pad_token_id, temperature=0.7)
    for i in range(2):  # recompute token by token with a plain forward over the whole sequence
        ids = torch.tensor([p_ids[i] + r_ids[i]])
        with torch.no_grad():
            logits = model(ids).logits[0, len(p_ids[i]) - 1 : -1].double() / 0.7
        want = logits.log_softmax(-1).gather(-1, torch.tensor(r_ids[i]).unsqueeze(-1)).sum()
        assert float(lp[i]) == pytest.approx(float(want), abs=1e-4)


def test_sequence_logps_packed_equal_padded_and_empty_response_falls_back(tiny):
    """sequence_logps packs each batch (layout.rows_layout); the sums equal the padded forward's, and a batch
    holding an empty response (nothing to pack) takes the padded path with a zero sum for that row."""
    from rlhfkit.models.logps import TokenLogprobs

    tok, model = tiny
    prompts = [[{"role": "user", "content": f"What is {i} plus 2?"}] for i in range(5)]
    p_ids, r_ids, _, _ = E.sample_responses(model, tok, prompts, 6, 1.0, seed=2)
    seqs = [p + r for p, r in zip(p_ids, r_ids)]
    ids, attn, tgt = data_lib.pad_right(seqs, tok.pad_token_id, [[False] * len(p) + [True] * len(r)
                                                                  for p, r in zip(p_ids, r_ids)])
    with torch.no_grad():
        padded = TokenLogprobs(model.eval())(ids, attn, tgt)["logprobs"].sum(-1).double()
    torch.testing.assert_close(E.sequence_logps(model, p_ids, r_ids, tok.pad_token_id), padded, atol=1e-5, rtol=0)
    with_empty = E.sequence_logps(model, p_ids, r_ids[:2] + [[]] + r_ids[3:], tok.pad_token_id)
    assert with_empty[2] == 0.0
    torch.testing.assert_close(with_empty[[0, 1, 3, 4]], padded[[0, 1, 3, 4]], atol=1e-5, rtol=0)


def test_world_gold_ideal_vs_padded():
    """On world prompts: ideal responses have gold 1.0 and no bad styles; they beat padded ones every time."""
    from rlhfkit.world import WorldConfig, heldout_prompts, ideal_response, respond

    rows = heldout_prompts(WorldConfig(n_heldout_prompts=24))
    texts = [ideal_response(r["prompt"][0]["content"]) for r in rows]
    good = E.evaluate_texts(rows, texts, [len(t.split()) for t in texts], judges={}, gold=E.WORLD_GOLD)
    assert good["gold"] == pytest.approx(1.0) and all(v == 0 for v in good["style_rates"].values())
    assert set(good["by_kind"]) == {r["kind"] for r in rows}
    rng = random.Random(0)
    padded = [respond(r["prompt"][0]["content"], "padded", rng) for r in rows]
    bad = E.evaluate_texts(rows, padded, [len(t.split()) for t in padded], judges={}, gold=E.WORLD_GOLD,
                           reference={"good": good})
    assert bad["style_rates"]["padded"] == 1.0 and bad["gold_components"]["concise"] < 0
    assert bad["win_rate_vs_good"]["mean"] == 0.0 and bad["win_rate_vs_good"]["losses"] == 24


def test_run_command(toy_dir, tmp_path, tiny):
    """`rlhfkit eval` over a model directory and a sample file, with a reference policy and a KL reference."""
    tok, _ = tiny
    rows = _rows(toy_dir, 4)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    samples = write_jsonl(tmp_path / "canned.jsonl", [
        {"prompt": r["prompt"], "completion": [{"role": "assistant", "content": "one two three four five six"}]}
        for r in rows])
    cfg = E.Config(policies=[f"tiny={toy_dir / 'model'}", str(samples)], prompts=str(prompts),
                   tokenizer=str(toy_dir / "tok"), judges={"rm": "test_eval:words_list_reward"},
                   reference="tiny", ref_model=str(toy_dir / "model"), max_new_tokens=6,
                   output=str(tmp_path / "eval.json"), n_samples_kept=2)
    out = E.run(cfg)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert set(saved["policies"]) == {"tiny", "canned"}
    tiny_res, canned = saved["policies"]["tiny"], saved["policies"]["canned"]
    assert tiny_res["kl_to_ref"] == 0.0 and len(tiny_res["samples"]) == 2
    assert canned["judges"]["rm"]["mean"] == 6.0 and canned["distinct_2"] == pytest.approx(5 / 20)
    assert canned["self_bleu"] == 1.0 and "kl_to_ref" not in canned
    assert "win_rate_vs_tiny" in canned and out["policies"]["canned"]["win_rate_vs_tiny"]["n"] == 4
