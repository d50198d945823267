"""rlhfkit.math.losses against hand-worked values: Bradley-Terry, the DPO family, the dispatch, PPO policy/value losses."""
import math

import pytest
import torch

from rlhfkit.math.losses import (AGGREGATIONS, LossType, aggregate, bradley_terry_loss, bt_soft_loss, cispo_policy_loss,
                            dpo_sigmoid, entropy_bonus, hinge, ipo, kto, kto_reference_point, nll_loss,
                            orpo_odds_ratio, ppo_policy_loss, preference_loss, sequence_log_ratio, sft, simpo,
                            value_loss)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def softplus(x):  # log(1 + e^x), for writing expected values
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------------------------------------ reward model
def test_bradley_terry_by_hand():
    """loss = -log sigmoid(d) = log(1 + e^-d):  d = 0 -> log 2;  d = 1 -> 0.313262;  d = -2 -> 2.126928.
    margin 1 on d = 1 -> log 2. centering 0.01 with r_c = r_r = 1 -> log 2 + 0.01 * (1 + 1)^2 = log 2 + 0.04."""
    losses, m = bradley_terry_loss(t(0.0, 1.0, -1.0), t(0.0, 0.0, 1.0))
    torch.testing.assert_close(losses, t(math.log(2), softplus(-1), softplus(2)), rtol=1e-12, atol=0)
    assert m["accuracy"].item() == pytest.approx(1 / 3) and m["margin"].item() == pytest.approx(-1 / 3)
    losses, _ = bradley_terry_loss(t(1.0), t(0.0), margin=t(1.0))
    assert losses.item() == pytest.approx(math.log(2), rel=1e-12)
    losses, _ = bradley_terry_loss(t(1.0), t(1.0), center_coef=0.01)
    assert losses.item() == pytest.approx(math.log(2) + 0.04, rel=1e-12)


def test_bt_soft_loss_by_hand():
    """p = 0.5 at d = 0: log 2 (the minimum). p = 0.5 at d = 2: 0.5 (log(1+e^-2) + log(1+e^2)) = log(1+e^-2) + 1.
    p = 1 reduces to plain BT."""
    losses, _ = bt_soft_loss(t(0.0, 2.0), t(0.0, 0.0), 0.5)
    torch.testing.assert_close(losses, t(math.log(2), softplus(-2) + 1), rtol=1e-12, atol=0)
    c, r = t(0.3, -1.2, 2.0), t(0.1, 0.5, -1.0)
    torch.testing.assert_close(bt_soft_loss(c, r, 1.0)[0], bradley_terry_loss(c, r)[0], rtol=1e-12, atol=0)
    # per-example targets: a tie (0.5) and a normal pair (1.0) in one batch
    mixed, _ = bt_soft_loss(t(0.0, 1.0), t(0.0, 0.0), t(0.5, 1.0))
    torch.testing.assert_close(mixed, t(math.log(2), softplus(-1)), rtol=1e-12, atol=0)


def test_nll_loss_token_mean_and_empty_mask():
    lp = t(-1.0, -2.0, -4.0).view(1, 3)
    assert nll_loss(lp, torch.tensor([[True, True, False]])).item() == 1.5
    assert nll_loss(lp, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


# ------------------------------------------------------------------------------------------------ DPO family
def test_dpo_sigmoid_by_hand():
    """beta = 0.1; chosen log-ratio k / beta, rejected 0 -> beta * h = k -> loss = log(1 + e^-k):
    k = 0 -> log 2 = 0.693147 (policy == reference), k = 1 -> 0.313262, k = 2 -> 0.126928.
    Rewards: beta * (pi - ref) = (0, 1, 2) chosen, 0 rejected."""
    ref_c, ref_r = t(-5.0, -5.0, -5.0), t(-7.0, -7.0, -7.0)
    pol_c = ref_c + t(0.0, 10.0, 20.0)
    losses, cr, rr = dpo_sigmoid(pol_c, ref_r.clone(), ref_c, ref_r, beta=0.1)
    torch.testing.assert_close(losses, t(math.log(2), softplus(-1), softplus(-2)), rtol=1e-12, atol=0)
    torch.testing.assert_close(cr, t(0.0, 1.0, 2.0), rtol=1e-12, atol=1e-12)
    assert torch.equal(rr, t(0.0, 0.0, 0.0))
    # policy == reference: log 2 whatever the log-probs
    lp_c, lp_r = t(-3.0, -11.0), t(-8.0, -0.5)
    assert torch.allclose(dpo_sigmoid(lp_c, lp_r, lp_c, lp_r, 0.5)[0], t(math.log(2), math.log(2)), rtol=1e-12)


def test_rdpo_length_term_by_hand():
    """R-DPO (Park et al. 2024, eq. 9): logit = beta h + alpha (|y_w| - |y_l|).
    pi_c = -1, pi_r = -2, ref_c = ref_r = -1.5 -> h = 0.5 + 0.5 = 1; beta = 0.1 -> beta h = 0.1.
    Chosen 4 tokens, rejected 10: alpha = 0.05 -> logit 0.1 - 0.3 = -0.2 -> loss log(1 + e^0.2) = 0.798139
    (plain DPO: log(1 + e^-0.1) = 0.644397): a short chosen answer is pushed harder, a long one less.
    alpha = 0, or equal lengths, is exactly plain DPO; the preference_loss entry point passes the lengths."""
    pc, pr, rc, rr = t(-1.0), t(-2.0), t(-1.5), t(-1.5)
    plain = dpo_sigmoid(pc, pr, rc, rr, 0.1)[0]
    assert plain.item() == pytest.approx(math.log(1 + math.exp(-0.1)), rel=1e-12)
    rdpo = dpo_sigmoid(pc, pr, rc, rr, 0.1, length_alpha=0.05, length_diff=t(4.0 - 10.0))[0]
    assert rdpo.item() == pytest.approx(math.log(1 + math.exp(0.2)), rel=1e-12)
    assert rdpo.item() == pytest.approx(0.798139, abs=1e-6)
    assert torch.equal(dpo_sigmoid(pc, pr, rc, rr, 0.1, length_alpha=0.05, length_diff=t(0.0))[0], plain)
    via = preference_loss("sigmoid", policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=rc,
                          ref_rejected_logps=rr, chosen_lengths=t(4.0), rejected_lengths=t(10.0), beta=0.1,
                          length_alpha=0.05)[0]
    torch.testing.assert_close(via, rdpo, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="length"):
        dpo_sigmoid(pc, pr, rc, rr, 0.1, length_alpha=0.05)
    with pytest.raises(ValueError, match="length"):
        preference_loss("sigmoid", policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=rc,
                        ref_rejected_logps=rr, beta=0.1, length_alpha=0.05)


def test_cdpo_label_smoothing():
    """cDPO: (1 - eps) log(1 + e^-k) + eps log(1 + e^k) = log(1 + e^-k) + eps * k (since log(1+e^k) = k +
    log(1+e^-k)). k = 1, eps = 0.1 -> 0.313262 + 0.1 = 0.413262. eps = 0 is exactly plain DPO."""
    ref_c, ref_r, pol_r = t(-5.0), t(-7.0), t(-7.0)
    pol_c = ref_c + 10.0
    plain = dpo_sigmoid(pol_c, pol_r, ref_c, ref_r, 0.1)[0]
    assert torch.equal(dpo_sigmoid(pol_c, pol_r, ref_c, ref_r, 0.1, label_smoothing=0.0)[0], plain)
    smoothed = dpo_sigmoid(pol_c, pol_r, ref_c, ref_r, 0.1, label_smoothing=0.1)[0]
    assert smoothed.item() == pytest.approx(softplus(-1) + 0.1, rel=1e-12)
    # eps = 0.5: symmetric, the preference carries no signal -> loss is even in h
    a = dpo_sigmoid(pol_c, pol_r, ref_c, ref_r, 0.1, label_smoothing=0.5)[0]
    b = dpo_sigmoid(pol_r, pol_c, ref_r, ref_c, 0.1, label_smoothing=0.5)[0]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_ipo_by_hand():
    """IPO (h - 1/(2 beta))^2, beta = 0.1 -> target 5: h = 5 -> 0; h = 0 -> 25; h = 7 -> 4."""
    z = t(0.0, 0.0, 0.0)
    losses, _, _ = ipo(t(5.0, 0.0, 7.0), z, z, z, beta=0.1)
    torch.testing.assert_close(losses, t(0.0, 25.0, 4.0), rtol=1e-12, atol=1e-12)


def test_hinge_by_hand():
    """relu(1 - beta h), beta = 0.5: h = 0 -> 1; h = 1 -> 0.5; h = 2 -> 0; h = 4 -> 0; h = -2 -> 2."""
    z = torch.zeros(5, dtype=torch.float64)
    losses, _, _ = hinge(t(0.0, 1.0, 2.0, 4.0, -2.0), z, z, z, beta=0.5)
    assert losses.tolist() == [1.0, 0.5, 0.0, 0.0, 2.0]


def test_simpo_by_hand():
    """avg_w = -1, avg_l = -2, beta = 2, gamma = 0.5: -log sigmoid(2 * 1 - 0.5) = log(1 + e^-1.5) = 0.201413;
    rewards beta * avg = (-2, -4). gamma = 0, equal averages -> log 2."""
    losses, cr, rr = simpo(t(-1.0), t(-2.0), beta=2.0, gamma=0.5)
    assert losses.item() == pytest.approx(softplus(-1.5), rel=1e-12)
    assert (cr.item(), rr.item()) == (-2.0, -4.0)
    assert simpo(t(-1.3), t(-1.3), 2.0, 0.0)[0].item() == pytest.approx(math.log(2), rel=1e-12)


def test_orpo_by_hand():
    """avg_w = log 0.5 -> P = 0.5, odds 1, log odds 0; avg_l = log 0.2 -> odds 0.25, log odds -log 4.
    log odds ratio = log 4 -> -log sigmoid(log 4) = log(1 + 1/4) = log 1.25; times lambda = 0.1 -> 0.0223144.
    Full ORPO via the dispatch adds NLL = -avg_w = log 2 (lengths 3: sums 3 log 0.5, 3 log 0.2)."""
    losses, cr, rr = orpo_odds_ratio(t(math.log(0.5)), t(math.log(0.2)), lam=0.1)
    assert losses.item() == pytest.approx(0.1 * math.log(1.25), rel=1e-12)
    assert cr.item() == pytest.approx(0.1 * math.log(0.5), rel=1e-12)
    full, _, _ = preference_loss("orpo", policy_chosen_logps=t(3 * math.log(0.5)),
                                 policy_rejected_logps=t(3 * math.log(0.2)), chosen_lengths=t(3.0),
                                 rejected_lengths=t(3.0), beta=0.1)
    assert full.item() == pytest.approx(0.1 * math.log(1.25) + math.log(2), rel=1e-12)


def test_kto_by_hand():
    """beta = 0.1. z0 from mismatched pairs: log-ratios (1.0, 0.0) -> mean 0.5 (ratios (-1, -2) -> clamp to 0).
    desirable r = 10.5: 1 - sigmoid(0.1 * (10.5 - 0.5)) = 1 - sigmoid(1) = 0.268941;
    undesirable r = -9.5: 1 - sigmoid(0.1 * (0.5 + 9.5)) = 0.268941. With lambda_D = 1.33, lambda_U = 2:
    losses (1.33 * 0.268941, 2 * 0.268941); rewards beta * r = 1.05 and -0.95."""
    z0 = kto_reference_point(t(-1.0, -3.0), t(-2.0, -3.0))
    assert z0.item() == 0.5
    assert kto_reference_point(t(-3.0, -4.0), t(-2.0, -2.0)).item() == 0.0
    one_minus_sig1 = 1 - 1 / (1 + math.exp(-1))
    losses, cr, rr = kto(t(-1.0), t(-20.0), t(-11.5), t(-10.5), z0, beta=0.1, desirable_weight=1.33,
                         undesirable_weight=2.0)
    torch.testing.assert_close(losses, t(1.33 * one_minus_sig1, 2 * one_minus_sig1), rtol=1e-12, atol=0)
    assert cr.item() == pytest.approx(1.05, rel=1e-12) and rr.item() == pytest.approx(-0.95, rel=1e-12)
    # unequal set sizes; policy == reference and z0 = 0 -> every loss is 1 - sigmoid(0) = 0.5
    lp_d, lp_u = t(-3.0, -4.0, -5.0), t(-6.0)
    losses, _, _ = kto(lp_d, lp_u, lp_d, lp_u, 0.0, beta=0.1)
    assert losses.tolist() == [0.5, 0.5, 0.5, 0.5]


def test_sft_per_example_token_mean():
    assert sft(t(-6.0, -3.0), t(3.0, 1.0)).tolist() == [2.0, 3.0]


# ------------------------------------------------------------------------------------------------ dispatch
def test_loss_type_properties():
    table = {m.value: (m.needs_reference, m.length_normalised, m.needs_nll, m.unpaired) for m in LossType}
    assert table == {"sigmoid": (True, False, False, False), "ipo": (True, False, False, False),
                     "hinge": (True, False, False, False), "simpo": (False, True, False, False),
                     "orpo": (False, True, True, False), "kto": (True, False, False, True),
                     "sft": (False, False, True, False)}
    assert LossType("simpo") is LossType.simpo and LossType.simpo == "simpo"


def _pairs():
    g = torch.Generator().manual_seed(0)
    pc, pr = -torch.rand(4, generator=g, dtype=torch.float64) * 20, -torch.rand(4, generator=g, dtype=torch.float64) * 20
    rc, rr = pc + torch.randn(4, generator=g, dtype=torch.float64), pr + torch.randn(4, generator=g, dtype=torch.float64)
    lc, lr = t(5.0, 9.0, 6.0, 5.0), t(9.0, 5.0, 6.0, 8.0)
    return dict(policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=rc, ref_rejected_logps=rr,
                chosen_lengths=lc, rejected_lengths=lr)


def test_dispatch_matches_pure_functions():
    x = _pairs()
    args = (x["policy_chosen_logps"], x["policy_rejected_logps"], x["ref_chosen_logps"], x["ref_rejected_logps"])
    avg_c, avg_r = x["policy_chosen_logps"] / x["chosen_lengths"], x["policy_rejected_logps"] / x["rejected_lengths"]
    expected = {
        "sigmoid": dpo_sigmoid(*args, 0.1, 0.2)[0], "ipo": ipo(*args, 0.1)[0], "hinge": hinge(*args, 0.1)[0],
        "simpo": simpo(avg_c, avg_r, 0.1, 0.7)[0], "orpo": orpo_odds_ratio(avg_c, avg_r, 0.1)[0] - avg_c,
        "kto": kto(*args, 0.3, 0.1)[0], "sft": -avg_c}
    for name, exp in expected.items():
        got, cr, rr = preference_loss(name, **x, beta=0.1, label_smoothing=0.2, gamma=0.7, kto_kl=0.3)
        torch.testing.assert_close(got, exp, rtol=1e-12, atol=0, msg=name)
        assert not cr.requires_grad and cr.shape == rr.shape == (4,)


def test_combined_losses_are_weighted_sums_with_first_rewards():
    x = _pairs()
    d, dcr, drr = preference_loss(LossType.sigmoid, **x, beta=0.1)
    s, _, _ = preference_loss(LossType.sft, **x, beta=0.1)
    mix, cr, rr = preference_loss([LossType.sigmoid, "sft"], **x, beta=0.1, loss_weights=[1.0, 0.2])
    torch.testing.assert_close(mix, d + 0.2 * s, rtol=1e-12, atol=0)
    assert torch.equal(cr, dcr) and torch.equal(rr, drr)


def test_dispatch_validates_inputs():
    x = _pairs()
    no_ref = {k: v for k, v in x.items() if not k.startswith("ref_")}
    no_len = {k: v for k, v in x.items() if not k.endswith("lengths")}
    with pytest.raises(ValueError, match="reference"):
        preference_loss("sigmoid", **no_ref, beta=0.1)
    preference_loss("simpo", **no_ref, beta=2.0)  # reference-free: fine without ref
    with pytest.raises(ValueError, match="lengths"):
        preference_loss("simpo", **no_len, beta=2.0)
    with pytest.raises(ValueError, match="lengths"):
        preference_loss("sft", **no_len, beta=2.0)
    with pytest.raises(ValueError, match="kto_kl"):
        preference_loss("kto", **x, beta=0.1)
    with pytest.raises(ValueError, match="combined"):
        preference_loss(["kto", "sft"], **x, beta=0.1, kto_kl=0.0)
    with pytest.raises(ValueError, match="weights"):
        preference_loss(["sigmoid", "sft"], **x, beta=0.1, loss_weights=[1.0])
    with pytest.raises(ValueError):
        preference_loss("dpo-but-misspelt", **x, beta=0.1)


def test_dpo_gradient_direction():
    """The gradient of DPO raises the chosen log-prob and lowers the rejected one, with magnitude
    beta * sigmoid(-beta h) (Rafailov et al. eq. 7 gradient): at h = 0, beta = 0.1 -> 0.05."""
    pc, pr = t(-3.0).requires_grad_(), t(-4.0).requires_grad_()
    losses, _, _ = dpo_sigmoid(pc, pr, t(-3.0), t(-4.0), 0.1)
    losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.05, rel=1e-12) and pr.grad.item() == pytest.approx(0.05, rel=1e-12)


# ------------------------------------------------------------------------------------------------ PPO
def test_ppo_ratio_one_gives_minus_mean_advantage():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(3, 6, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 6, generator=g) > 0.3
    loss, stats = ppo_policy_loss(lp, lp.clone(), adv, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(-adv[mask].mean().item(), rel=1e-12)
    assert stats["clipfrac"].item() == 0.0 and stats["approx_kl"].item() == 0.0 and stats["ratio"].item() == 1.0


def test_ppo_clipping_by_hand():
    """clip 0.2; ratios (1.5, 0.5, 1.1, 1.0), advantages (1, 1, -1, 2), then one padded token (garbage):
      1.5, A=1:  max(-1.5, -1.2) = -1.2   clipped branch active
      0.5, A=1:  max(-0.5, -0.8) = -0.5   (clipping never binds when it would help: pessimistic bound)
      1.1, A=-1: max(1.1, 1.1)   = 1.1
      1.0, A=2:  -2
    token mean = (-1.2 - 0.5 + 1.1 - 2) / 4 = -0.65; clipfrac 1/4; ratio mean 1.025;
    approx_kl = mean((r - 1) - log r) = (0.5 - ln 1.5 + ln 2 - 0.5 + 0.1 - ln 1.1 + 0) / 4."""
    old = torch.zeros(1, 5, dtype=torch.float64)
    lp = torch.log(t(1.5, 0.5, 1.1, 1.0, 1e30)).view(1, 5).requires_grad_()
    adv = t(1.0, 1.0, -1.0, 2.0, 1e9).view(1, 5)
    mask = torch.tensor([[True, True, True, True, False]])
    loss, stats = ppo_policy_loss(lp, old, adv, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(-0.65, rel=1e-12)
    assert stats["clipfrac"].item() == 0.25
    assert stats["ratio"].item() == pytest.approx(1.025, rel=1e-12)
    k3 = (0.5 - math.log(1.5) + math.log(2) - 0.5 + 0.1 - math.log(1.1)) / 4
    assert stats["approx_kl"].item() == pytest.approx(k3, rel=1e-12)
    loss.backward()
    # clipped token: zero gradient; unclipped ones: d(-A r)/d log p = -A r / 4
    torch.testing.assert_close(lp.grad, t(0.0, -0.5 / 4, 1.1 / 4, -2.0 / 4, 0.0).view(1, 5), rtol=1e-12, atol=0)
    # clip-higher (DAPO): eps_high = 0.6 lets ratio 1.5 through -> -1.5 instead of -1.2
    loss_hi, _ = ppo_policy_loss(lp.detach(), old, adv, mask, clip_range=0.2, clip_range_high=0.6)
    assert loss_hi.item() == pytest.approx((-1.5 - 0.5 + 1.1 - 2) / 4, rel=1e-12)


def test_ppo_sequence_level_advantages_broadcast():
    lp = torch.zeros(2, 3, dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    loss, _ = ppo_policy_loss(lp, lp, t(1.0, -2.0), mask)
    assert loss.item() == pytest.approx((-1 * 3 + 2 * 1) / 4, rel=1e-12)


def test_aggregations_by_hand():
    """Row 0 has per-token losses (1, 3), row 1 has (5): token_mean (1 + 3 + 5) / 3 = 3;
    seq_mean ((1 + 3) / 2 + 5) / 2 = 3.5; seq_mean_token_sum (4 + 5) / 2 = 4.5."""
    x = t(1.0, 3.0, 5.0, 99.0).view(2, 2)
    mask = torch.tensor([[True, True], [True, False]])
    assert [aggregate(x, mask, a).item() for a in ("token_mean", "seq_mean", "seq_mean_token_sum")] == [3.0, 3.5, 4.5]
    assert set(AGGREGATIONS) == {"token_mean", "seq_mean", "seq_mean_token_sum"}
    # the PPO loss uses it: ratio 1 and A = -x gives the same numbers
    for a, expected in [("token_mean", 3.0), ("seq_mean", 3.5), ("seq_mean_token_sum", 4.5)]:
        z = torch.zeros(2, 2, dtype=torch.float64)
        assert ppo_policy_loss(z, z, -x, mask, aggregation=a)[0].item() == expected
    with pytest.raises(ValueError):
        aggregate(x, mask, "token_sum")


def test_value_loss_clipping_by_hand():
    """old values 0, clip 0.2, values (0.5, -0.1, 0.3), returns (1, 0, 0), plus a pad:
      0.5 -> clipped 0.2: max((0.5-1)^2, (0.2-1)^2) = max(0.25, 0.64) = 0.64   clipped larger
     -0.1 -> inside the clip: 0.01
      0.3 -> clipped 0.2: max(0.09, 0.04) = 0.09
    loss = 0.5 * (0.64 + 0.01 + 0.09) / 3 = 0.123333...; vf_clipfrac = 1/3.
    Without clipping: 0.5 * (0.25 + 0.01 + 0.09) / 3 = 0.058333..."""
    values = t(0.5, -0.1, 0.3, 7.0).view(1, 4)
    old = torch.zeros(1, 4, dtype=torch.float64)
    returns = t(1.0, 0.0, 0.0, -7.0).view(1, 4)
    mask = torch.tensor([[True, True, True, False]])
    loss, stats = value_loss(values, old, returns, mask, clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.74 / 3, rel=1e-12)
    assert stats["vf_clipfrac"].item() == pytest.approx(1 / 3, rel=1e-12)
    loss_nc, stats_nc = value_loss(values, old, returns, mask, clip_range_value=None)
    assert loss_nc.item() == pytest.approx(0.5 * 0.35 / 3, rel=1e-12) and stats_nc["vf_clipfrac"].item() == 0.0


# ------------------------------------------------------------------------------- DAPO, GSPO, CISPO, entropy
def _random_policy_case(seed, B=4, T=5, one_token=False):
    g = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(B, T, generator=g, dtype=torch.float64)).requires_grad_()
    old = lp.detach() + 0.6 * torch.randn(B, T, generator=g, dtype=torch.float64)  # many ratios outside 1 +- 0.2
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    if one_token:  # exactly one real token per row, at a different position in each row
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[torch.arange(B), torch.randint(0, T, (B,), generator=g)] = True
    else:
        mask = torch.rand(B, T, generator=g) > 0.3
        mask[:, 0] = True
    return lp, old, adv, mask


@pytest.mark.parametrize("seed", range(3))
def test_dapo_symmetric_clip_equals_token_mean_grpo(seed):
    """DAPO's loss with eps_low == eps_high and token_mean aggregation is the GRPO clipped loss aggregated per token
    (value and gradient): clip-higher is the only change to the objective (Yu et al. 2025, eq. 8 vs GRPO)."""
    lp, old, adv, mask = _random_policy_case(seed)
    lp2 = lp.detach().clone().requires_grad_()
    dapo, s1 = ppo_policy_loss(lp, old, adv, mask, clip_range=0.2, clip_range_high=0.2, aggregation="token_mean")
    grpo, s2 = ppo_policy_loss(lp2, old, adv, mask, clip_range=0.2)
    dapo.backward()
    grpo.backward()
    assert dapo.item() == grpo.item() and s1["clipfrac"] > 0  # some clipping really happens in these cases
    assert torch.equal(lp.grad, lp2.grad)
    # and eps_high > eps_low changes it exactly where a ratio above 1.2 has a positive advantage
    hi, _ = ppo_policy_loss(lp.detach(), old, adv, mask, clip_range=0.2, clip_range_high=0.6)
    ratio = torch.exp(lp.detach() - old)
    binds = mask & (adv[:, None] > 0) & (ratio > 1.2)
    assert (hi.item() != grpo.item()) == bool(binds.any())


def test_sequence_log_ratio_by_hand():
    """Row 0: token ratios (4, 1) -> log s = (ln 4 + 0) / 2 = ln 2, s = 2 (the geometric mean of the ratios);
    row 1: one token of ratio 1.1 -> s = 1.1; row 2: empty -> 0 (ratio 1)."""
    old = torch.zeros(3, 2, dtype=torch.float64)
    lp = torch.log(t(4.0, 1.0, 1.1, 50.0, 7.0, 7.0)).view(3, 2)
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    torch.testing.assert_close(sequence_log_ratio(lp, old, mask),
                               t(math.log(2.0), math.log(1.1), 0.0).view(3, 1), rtol=1e-15, atol=0)


def test_gspo_by_hand():
    """GSPO (Zheng et al. 2025, eq. 5) with eps 0.2. Row 0: token ratios (4, 1), s_0 = 2, A = 1; row 1: one token,
    s_1 = 1.1, A = -1; a padded garbage token in row 1.
      row 0: max(-A s, -A clip(s, 0.8, 1.2)) = max(-2, -1.2) = -1.2, clipped: the whole sequence is clipped
      row 1: max(1.1, 1.1) = 1.1
    seq_mean (the paper's 1/G sum_i): (-1.2 + 1.1) / 2 = -0.05;  token_mean: (2 * -1.2 + 1.1) / 3 = -1.3 / 3.
    clipfrac 2/3 of the tokens; ratio stat (2 + 2 + 1.1) / 3 = 1.7.
    Gradient (seq_mean): row 0 clipped -> 0; row 1: d(-A s)/d log p = -A s = 1.1, times 1/|y_1| = 1 and 1/G = 1/2
    -> 0.55. With eps_high = 10 row 0 is unclipped: d(-s_0)/d log p_t = -s_0 / |y_0| = -1, times 1/2 -> -0.5 each."""
    old = torch.zeros(2, 2, dtype=torch.float64)
    lp = torch.log(t(4.0, 1.0, 1.1, 1e30)).view(2, 2).requires_grad_()
    adv = t(1.0, -1.0)
    mask = torch.tensor([[True, True], [True, False]])
    loss, stats = ppo_policy_loss(lp, old, adv, mask, 0.2, "seq_mean", importance_sampling_level="sequence")
    assert loss.item() == pytest.approx(-0.05, rel=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3, rel=1e-15)
    assert stats["ratio"].item() == pytest.approx(1.7, rel=1e-14)
    loss.backward()
    torch.testing.assert_close(lp.grad, t(0.0, 0.0, 0.55, 0.0).view(2, 2), rtol=1e-12, atol=0)
    tok, _ = ppo_policy_loss(lp.detach(), old, adv, mask, 0.2, "token_mean", importance_sampling_level="sequence")
    assert tok.item() == pytest.approx(-1.3 / 3, rel=1e-12)
    lp2 = lp.detach().clone().requires_grad_()
    ppo_policy_loss(lp2, old, adv, mask, 0.2, "seq_mean", 10.0, "sequence")[0].backward()
    torch.testing.assert_close(lp2.grad, t(-0.5, -0.5, 0.55, 0.0).view(2, 2), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="importance_sampling_level"):
        ppo_policy_loss(lp2, old, adv, mask, importance_sampling_level="tokens")


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_gspo_equals_grpo_when_every_sequence_has_one_token(seed, aggregation):
    """With |y_i| = 1 the sequence ratio s_i is the token ratio, so GSPO and GRPO are the same loss and gradient."""
    lp, old, adv, mask = _random_policy_case(seed, B=16, one_token=True)
    lp2 = lp.detach().clone().requires_grad_()
    seq, s1 = ppo_policy_loss(lp, old, adv, mask, 0.2, aggregation, 0.28, importance_sampling_level="sequence")
    tok, s2 = ppo_policy_loss(lp2, old, adv, mask, 0.2, aggregation, 0.28, importance_sampling_level="token")
    seq.backward()
    tok.backward()
    assert seq.item() == pytest.approx(tok.item(), rel=1e-14) and s1["clipfrac"] == s2["clipfrac"] > 0
    torch.testing.assert_close(lp.grad, lp2.grad, rtol=1e-14, atol=0)


def test_gspo_and_grpo_differ_on_longer_sequences():
    """The identity above is not vacuous: with several tokens per row the two levels give different losses."""
    lp, old, adv, mask = _random_policy_case(0)
    seq, _ = ppo_policy_loss(lp, old, adv, mask, 0.2, importance_sampling_level="sequence")
    tok, _ = ppo_policy_loss(lp, old, adv, mask, 0.2, importance_sampling_level="token")
    assert abs(seq.item() - tok.item()) > 1e-3


def test_cispo_by_hand():
    """CISPO (MiniMax 2025, sec. 3.1), eps_high 0.2, no lower bound. old log-probs ln 0.5; ratios (1.5, 0.5, 1.1),
    advantages (1, 1, -1), then a padded token:
      weights w = sg(min(r, 1.2)) = (1.2, 0.5, 1.1)     (first truncated: clipfrac 1/3; mean weight 2.8 / 3)
      loss_t = -w A log p, log p = ln(0.5 r) = (ln 0.75, ln 0.25, ln 0.55)
      token mean = -(1.2 ln 0.75 + 0.5 ln 0.25 - 1.1 ln 0.55) / 3
      gradient d loss / d log p_t = -w_t A_t / 3 = (-0.4, -0.5/3, 1.1/3): the truncated token keeps a gradient,
      where the clipped surrogate gives it 0. A lower bound eps_low 0.3 lifts the 0.5 weight to 0.7."""
    old = torch.full((1, 4), math.log(0.5), dtype=torch.float64)
    lp = torch.log(0.5 * t(1.5, 0.5, 1.1, 3.0)).view(1, 4).requires_grad_()
    adv = t(1.0, 1.0, -1.0, 5.0).view(1, 4)
    mask = torch.tensor([[True, True, True, False]])
    loss, stats = cispo_policy_loss(lp, old, adv, mask, clip_range_high=0.2)
    expected = -(1.2 * math.log(0.75) + 0.5 * math.log(0.25) - 1.1 * math.log(0.55)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3, rel=1e-15)
    assert stats["is_weight"].item() == pytest.approx(2.8 / 3, rel=1e-12)
    loss.backward()
    torch.testing.assert_close(lp.grad, t(-0.4, -0.5 / 3, 1.1 / 3, 0.0).view(1, 4), rtol=1e-12, atol=0)
    clipped_lp = lp.detach().clone().requires_grad_()
    ppo_policy_loss(clipped_lp, old, adv, mask, 0.2)[0].backward()
    assert clipped_lp.grad[0, 0].item() == 0.0  # the same token under the clipped surrogate
    lp3 = lp.detach().clone().requires_grad_()
    cispo_policy_loss(lp3, old, adv, mask, 0.2, clip_range_low=0.3)[0].backward()
    assert lp3.grad[0, 1].item() == pytest.approx(-0.7 / 3, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_cispo_gradient_equals_policy_gradient_on_policy(seed):
    """At ratio 1 (on-policy) the CISPO gradient is the clipped surrogate's: -A grad log pi, aggregated alike."""
    lp, _, adv, mask = _random_policy_case(seed)
    lp2 = lp.detach().clone().requires_grad_()
    cispo_policy_loss(lp, lp.detach(), adv, mask, 0.28)[0].backward()
    ppo_policy_loss(lp2, lp2.detach(), adv, mask, 0.2)[0].backward()
    torch.testing.assert_close(lp.grad, lp2.grad, rtol=1e-14, atol=0)


def test_entropy_bonus_by_hand():
    """Entropies (1, 3 | 2), coef 0.01: token mean 2 -> -0.02; seq_mean (2 + 2) / 2 = 2 -> -0.02; coef 0 -> 0;
    gradient d/dH = -coef / 3 per real token."""
    h = t(1.0, 3.0, 2.0, 9.0).view(2, 2).requires_grad_()
    mask = torch.tensor([[True, True], [True, False]])
    bonus = entropy_bonus(h, mask, 0.01)
    assert bonus.item() == pytest.approx(-0.02, rel=1e-14)
    assert entropy_bonus(h, mask, 0.01, "seq_mean").item() == pytest.approx(-0.02, rel=1e-14)
    assert entropy_bonus(h, mask, 0.0).item() == 0.0
    bonus.backward()
    torch.testing.assert_close(h.grad, t(-0.01 / 3, -0.01 / 3, -0.01 / 3, 0.0).view(2, 2), rtol=1e-14, atol=0)
