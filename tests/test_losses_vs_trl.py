"""Our losses against values recorded from TRL 1.16's own loss code on fixed inputs
(../shared/bench/trl_reference_losses.json, produced by trl_reference_losses.py beside it).

Layout of the file (its `layout` key): B = 4 pairs; rows 0..B-1 of every [2B, ...] tensor are the chosen sequences,
rows B..2B-1 the rejected ones (pair i = rows i and B + i). Per-token log-probs are [2B, L-1] with position j scoring
token j + 1, zero outside completion_mask[:, 1:]; sequence log-prob = sum over j, avg = sum / completion tokens.
We rebuild the sequence log-probs from the per-token tensors with our own `sequence_logprobs`, so the masking
convention is checked too. Inputs are float32; we compute in float64 and compare to 1e-6 (TRL's float32 rounding is
~1e-7 relative on these magnitudes).

Where TRL departs from the paper we follow the paper and test the difference explicitly:
  * DPO `sigmoid` ignores `label_smoothing` in TRL 1.16 (the recorded loss with 0.1 equals the one with 0.0). cDPO
    (DPO paper appendix) smooths: we check our cDPO against TRL's CPO `sigmoid`, which does implement the smoothing
    formula (reference-free, so with zero reference log-probs).
  * DPO `ipo` in TRL averages log-probs over completion tokens; Azar et al. (eq. 17) use sequence log-probs. Our
    `ipo` follows the paper (sums) in `preference_loss`; fed averaged log-probs, it reproduces TRL's numbers.
  * `sft` (the RPO / DPO+SFT term): per pair identical (token-mean NLL of the chosen response); over a batch TRL takes
    one token mean over all chosen tokens, we return per-example means (see the sft test).
  * ORPO: TRL's `odds_ratio_loss` returns +lambda * log sigmoid(log odds) (a quantity to subtract); ours returns the
    loss term -lambda * log sigmoid(log odds) (to add).
Not compared (not implemented here): nca_pair, bco_pair, sppo_hard, aot, apo, discopop, sigmoid_norm, robust with
eps > 0, exo_pair, f-divergences, LD-DPO, WPO, AlphaPO, apo_zero_unpaired.
"""
import json
import os
from pathlib import Path

import pytest
import torch

from rlhfkit.math.logprobs import sequence_logprobs
from rlhfkit.math.losses import (bradley_terry_loss, dpo_sigmoid, hinge, ipo, kto, kto_reference_point, orpo_odds_ratio,
                            preference_loss, simpo)

SHARED = Path(os.environ.get("RLHFKIT_SHARED") or Path(__file__).resolve().parents[2] / "shared")
REF_FILE = SHARED / "bench" / "trl_reference_losses.json"
TOL = dict(rtol=1e-6, atol=1e-6)

pytestmark = pytest.mark.skipif(not REF_FILE.exists(),
                                reason=f"TRL reference values not found at {REF_FILE} (set RLHFKIT_SHARED)")


@pytest.fixture(scope="module")
def ref():
    return json.loads(REF_FILE.read_text())


@pytest.fixture(scope="module")
def seqs(ref):
    """Sequence log-probs rebuilt from the per-token tensors: chosen / rejected halves, sums and lengths."""
    inp = ref["inputs"]
    B = inp["B"]
    mask = torch.tensor(inp["completion_mask"])[:, 1:].bool()  # (2B, L-1): position j scores token j + 1
    pol = sequence_logprobs(torch.tensor(inp["policy_token_logps"], dtype=torch.float64), mask)  # (2B,)
    refl = sequence_logprobs(torch.tensor(inp["ref_token_logps"], dtype=torch.float64), mask)
    lengths = mask.sum(1).double()
    # sanity: the same sums / lengths the file records
    torch.testing.assert_close(pol, torch.tensor(inp["policy_seq_logps"], dtype=torch.float64), **TOL)
    assert lengths.tolist() == inp["completion_tokens"]
    return dict(policy_chosen_logps=pol[:B], policy_rejected_logps=pol[B:], ref_chosen_logps=refl[:B],
                ref_rejected_logps=refl[B:], chosen_lengths=lengths[:B], rejected_lengths=lengths[B:])


def _close(got, expected):
    torch.testing.assert_close(torch.as_tensor(got, dtype=torch.float64).reshape(-1),
                               torch.as_tensor(expected, dtype=torch.float64).reshape(-1), **TOL)


def _dpo_cases(ref, loss_type, **match):
    cases = [c for c in ref["dpo"] if c["loss_type"] == [loss_type] and c["f_divergence_type"] == "reverse_kl"
             and c["ld_alpha"] is None and not c["use_weighting"] and all(c[k] == v for k, v in match.items())]
    assert cases, f"no TRL dpo case {loss_type} {match}"
    return cases


def _check_dpo_metrics(case, losses, cr, rr, seqs):
    m = case["metrics"]
    _close(losses.mean(), case["loss"])
    _close(cr.mean(), m["rewards/chosen"])
    _close(rr.mean(), m["rewards/rejected"])
    _close((cr - rr).mean(), m["rewards/margins"])
    _close((cr > rr).double().mean(), m["rewards/accuracies"])
    _close(seqs["policy_chosen_logps"].mean(), m["logps/chosen"])
    _close(seqs["policy_rejected_logps"].mean(), m["logps/rejected"])


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("sigmoid", 0.5), ("hinge", 0.1)])
def test_dpo_variants_match_trl(ref, seqs, loss_type, beta):
    (case,) = _dpo_cases(ref, loss_type, beta=beta, label_smoothing=0.0)
    losses, cr, rr = preference_loss(loss_type, **seqs, beta=beta)
    _close(losses, case["per_pair_loss"])
    _check_dpo_metrics(case, losses, cr, rr, seqs)


def test_sft_per_example_matches_trl_batch_reduction_differs(ref, seqs):
    """Per pair (a batch of one) TRL's `sft` is the token-mean NLL of the chosen response, as ours. Over a batch TRL
    takes ONE token mean over all chosen tokens (sum NLL / sum lengths = 42.93 / 26 = 1.6513), whereas our per-example
    losses, averaged by the loop, give the mean of per-sequence means (1.6328; RPO, Pang et al. 2024, normalises per
    sequence). Weighting our per-example losses by length / mean length reproduces TRL's batch value."""
    (case,) = _dpo_cases(ref, "sft")
    losses, cr, rr = preference_loss("sft", **seqs, beta=0.1)
    _close(losses, case["per_pair_loss"])
    lengths = seqs["chosen_lengths"]
    _close((losses * lengths).sum() / lengths.sum(), case["loss"])
    assert abs(losses.mean().item() - case["loss"]) > 1e-2
    _check_dpo_metrics(dict(case, loss=losses.mean().item()), losses, cr, rr, seqs)


def test_ipo_trl_averages_logprobs_paper_sums(ref, seqs):
    """TRL's ipo = our ipo on per-token AVERAGE log-probs; the paper's (and our dispatch's) sums differ."""
    (case,) = _dpo_cases(ref, "ipo", beta=0.1)
    s = seqs
    avg = [s[k] / s["chosen_lengths" if "chosen" in k else "rejected_lengths"]
           for k in ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")]
    losses, _, _ = ipo(*avg, beta=0.1)
    _close(losses, case["per_pair_loss"])
    _close(losses.mean(), case["loss"])
    paper, cr, rr = preference_loss("ipo", **seqs, beta=0.1)
    assert not torch.allclose(paper, torch.tensor(case["per_pair_loss"], dtype=torch.float64), rtol=1e-2)
    _check_dpo_metrics(dict(case, loss=paper.mean().item()), paper, cr, rr, seqs)  # rewards use sums in both


def test_sigmoid_label_smoothing_trl_ignores_it_we_follow_cdpo(ref, seqs):
    (plain,) = _dpo_cases(ref, "sigmoid", beta=0.1, label_smoothing=0.0)
    (smoothed,) = _dpo_cases(ref, "sigmoid", beta=0.1, label_smoothing=0.1)
    assert smoothed["per_pair_loss"] == plain["per_pair_loss"]  # TRL 1.16: label_smoothing has no effect
    ours, _, _ = preference_loss("sigmoid", **seqs, beta=0.1, label_smoothing=0.1)
    h = 0.1 * ((seqs["policy_chosen_logps"] - seqs["ref_chosen_logps"])
               - (seqs["policy_rejected_logps"] - seqs["ref_rejected_logps"]))
    # cDPO: (1 - eps) log(1 + e^-h) + eps log(1 + e^h), i.e. plain + eps * h
    _close(ours, torch.tensor(plain["per_pair_loss"], dtype=torch.float64) + 0.1 * h)
    # "robust" with eps = 0 is plain DPO in TRL too
    (robust0,) = _dpo_cases(ref, "robust", label_smoothing=0.0)
    _close(ours - 0.1 * h, robust0["per_pair_loss"])


def test_mixture_sigmoid_sft_weights(ref, seqs):
    """TRL mix [sigmoid, bco_pair, sft] with [0.8, 0.2, 1.0]: bco_pair is not ours, so we subtract TRL's own recorded
    bco_pair losses and compare the rest with our [sigmoid, sft] combined at [0.8, 1.0]."""
    (mix,) = [c for c in ref["dpo"] if c["loss_type"] == ["sigmoid", "bco_pair", "sft"]]
    assert mix["loss_weights"] == [0.8, 0.2, 1.0]
    (bco,) = _dpo_cases(ref, "bco_pair")
    ours, _, _ = preference_loss(["sigmoid", "sft"], **seqs, beta=0.1, loss_weights=[0.8, 1.0])
    expected = [m - 0.2 * b for m, b in zip(mix["per_pair_loss"], bco["per_pair_loss"])]
    _close(ours, expected)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_kto_matches_trl(ref, seqs, index):
    case = ref["kto"][index]
    assert case["loss_type"] == "kto"
    if case["calculate_KL"]:
        z0 = kto_reference_point(torch.tensor(case["kl_policy_logps"], dtype=torch.float64),
                                 torch.tensor(case["kl_ref_logps"], dtype=torch.float64))
    else:
        z0 = torch.tensor(0.0, dtype=torch.float64)
    _close(z0, case["metrics"]["kl"])
    losses, cr, rr = kto(seqs["policy_chosen_logps"], seqs["policy_rejected_logps"], seqs["ref_chosen_logps"],
                         seqs["ref_rejected_logps"], z0, beta=case["beta"],
                         desirable_weight=case["desirable_weight"], undesirable_weight=case["undesirable_weight"])
    _close(losses.mean(), case["loss"])
    _close(cr.mean(), case["metrics"]["rewards/chosen"])
    _close(rr.mean(), case["metrics"]["rewards/rejected"])
    via_dispatch, _, _ = preference_loss("kto", **seqs, beta=case["beta"], kto_kl=z0,
                                         desirable_weight=case["desirable_weight"],
                                         undesirable_weight=case["undesirable_weight"])
    torch.testing.assert_close(via_dispatch, losses, rtol=0, atol=0)


def _cpo(ref, loss_type, alpha=0.0, **match):
    cases = [c for c in ref["cpo"] if c["loss_type"] == loss_type and c["alpha"] == alpha
             and all(c[k] == v for k, v in match.items())]
    assert cases, f"no TRL cpo case {loss_type} {match}"
    return cases


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cdpo_formula_matches_trl_cpo_sigmoid(ref, seqs, label_smoothing):
    """TRL's CPO `sigmoid` is DPO without a reference model and does apply label smoothing (cDPO formula)."""
    (case,) = _cpo(ref, "sigmoid", label_smoothing=label_smoothing)
    z = torch.zeros(4, dtype=torch.float64)
    losses, cr, rr = dpo_sigmoid(seqs["policy_chosen_logps"], seqs["policy_rejected_logps"], z, z, case["beta"],
                                 label_smoothing=label_smoothing)
    _close(losses, case["losses"])
    _close(cr, case["chosen_rewards"])
    _close(rr, case["rejected_rewards"])


def test_hinge_and_ipo_match_trl_cpo(ref, seqs):
    z = torch.zeros(4, dtype=torch.float64)
    (h,) = _cpo(ref, "hinge")
    _close(hinge(seqs["policy_chosen_logps"], seqs["policy_rejected_logps"], z, z, h["beta"])[0], h["losses"])
    (i,) = _cpo(ref, "ipo")
    assert i["input_logps"] == "avg"
    avg_c = seqs["policy_chosen_logps"] / seqs["chosen_lengths"]
    avg_r = seqs["policy_rejected_logps"] / seqs["rejected_lengths"]
    losses, cr, rr = ipo(avg_c, avg_r, z, z, i["beta"])
    _close(losses, i["losses"])
    _close(cr, i["chosen_rewards"])


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_simpo_matches_trl(ref, seqs, gamma):
    (case,) = _cpo(ref, "simpo", simpo_gamma=gamma)
    assert case["input_logps"] == "avg"
    losses, cr, rr = preference_loss("simpo", policy_chosen_logps=seqs["policy_chosen_logps"],
                                     policy_rejected_logps=seqs["policy_rejected_logps"],
                                     chosen_lengths=seqs["chosen_lengths"], rejected_lengths=seqs["rejected_lengths"],
                                     beta=case["beta"], gamma=gamma)
    _close(losses, case["losses"])
    _close(cr, case["chosen_rewards"])
    _close(rr, case["rejected_rewards"])
    avg_c = seqs["policy_chosen_logps"] / seqs["chosen_lengths"]
    avg_r = seqs["policy_rejected_logps"] / seqs["rejected_lengths"]
    _close(simpo(avg_c, avg_r, case["beta"], gamma)[0], case["losses"])


@pytest.mark.parametrize("index", [0, 1])
def test_orpo_odds_ratio_matches_trl(ref, seqs, index):
    case = ref["orpo"][index]
    avg_c = seqs["policy_chosen_logps"] / seqs["chosen_lengths"]
    avg_r = seqs["policy_rejected_logps"] / seqs["rejected_lengths"]
    losses, cr, rr = orpo_odds_ratio(avg_c, avg_r, lam=case["beta"])
    _close(-losses, case["losses"])  # TRL returns the term to subtract; ours is the term to add
    _close(cr, case["chosen_rewards"])
    _close(rr, case["rejected_rewards"])
    # full ORPO via the dispatch = NLL(chosen, token mean) + odds-ratio term
    full, _, _ = preference_loss("orpo", **seqs, beta=case["beta"])
    _close(full, losses - avg_c)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_bradley_terry_matches_trl(ref, index):
    case = ref["reward"][index]
    rewards = torch.tensor(ref["inputs"]["reward_logits"], dtype=torch.float64)
    B = ref["inputs"]["B"]
    margin = None if case["margin"] is None else torch.tensor(case["margin"], dtype=torch.float64)
    losses, metrics = bradley_terry_loss(rewards[:B], rewards[B:], margin=margin,
                                         center_coef=case["center_rewards_coefficient"] or 0.0)
    _close(losses.mean(), case["loss"])
    _close(metrics["accuracy"], case["accuracy"])
    _close(metrics["margin"], case["margin_metric"])
