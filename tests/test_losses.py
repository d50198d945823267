"""rlhfkit.losses against hand-worked values: Bradley-Terry, the DPO family, the dispatch, PPO policy/value losses."""
import math

import pytest
import torch

from rlhfkit.losses import (AGGREGATIONS, LossType, aggregate, bradley_terry_loss, bt_soft_loss, dpo_sigmoid, hinge,
                            ipo, kto, kto_reference_point, nll_loss, orpo_odds_ratio, ppo_policy_loss,
                            preference_loss, sft, simpo, value_loss)


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
