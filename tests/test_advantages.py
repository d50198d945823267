"""rlhfkit.math.advantages: GAE (loop vs vectorised), whitening, GRPO / RLOO, the KL-shaped per-token reward,
DAPO's group filter and overlong penalty, REINFORCE++."""
import math

import pytest
import torch

from rlhfkit.math.advantages import (explained_variance, gae, gae_loop, grpo_advantages, informative_groups,
                                kl_penalised_rewards, last_token_mask, overlong_penalty, reinforce_pp_advantages,
                                rloo_advantages, whiten)


def _random_case(seed, B=6, T=11, leading=False):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, T + 1, (B,), generator=g)  # includes an empty row and a full row with luck
    lengths[0], lengths[1] = 0, T
    start = torch.randint(0, 3, (B,), generator=g) if leading else torch.zeros(B, dtype=torch.long)
    pos = torch.arange(T)[None]
    mask = (pos >= start[:, None]) & (pos < (start + lengths).clamp(max=T)[:, None])
    return rewards, values, mask


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.9, 0.0)])
@pytest.mark.parametrize("leading", [False, True])
def test_gae_vectorised_equals_loop(seed, gamma, lam, leading):
    rewards, values, mask = _random_case(seed, leading=leading)
    a_loop, r_loop = gae_loop(rewards, values, mask, gamma, lam)
    a_vec, r_vec = gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(a_vec, a_loop, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r_vec, r_loop, rtol=1e-12, atol=1e-12)
    assert torch.all(a_vec[~mask] == 0) and torch.all(r_vec[~mask] == 0)


def test_gae_padding_values_are_ignored():
    """Garbage in rewards/values after the last real token must not change anything."""
    rewards, values, mask = _random_case(7)
    r2, v2 = rewards.clone(), values.clone()
    r2[~mask], v2[~mask] = 1e6, -1e6
    for fn in (gae, gae_loop):
        a1, ret1 = fn(rewards, values, mask, 1.0, 0.95)
        a2, ret2 = fn(r2, v2, mask, 1.0, 0.95)
        torch.testing.assert_close(a1, a2, rtol=0, atol=0)
        torch.testing.assert_close(ret1, ret2, rtol=0, atol=0)


def test_gae_lambda1_gamma1_is_reward_to_go_minus_value():
    """With gamma = lam = 1 the deltas telescope: A_t = sum_{k>=t} r_k - V_t, and returns = reward-to-go."""
    rewards, values, mask = _random_case(11)
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    r = torch.where(mask, rewards, torch.zeros_like(rewards))
    to_go = r.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(adv, torch.where(mask, to_go - values, torch.zeros_like(values)), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(ret, torch.where(mask, to_go, torch.zeros_like(values)), rtol=1e-12, atol=1e-12)


def test_gae_by_hand():
    """Three real tokens, one pad; r = (0, 0, 1), V = (0.5, 0.25, 0.5), gamma = 1, lam = 0.5:
    delta_2 = 1 + 0 - 0.5 = 0.5            A_2 = 0.5
    delta_1 = 0 + 0.5 - 0.25 = 0.25        A_1 = 0.25 + 0.5 * 0.5 = 0.5
    delta_0 = 0 + 0.25 - 0.5 = -0.25       A_0 = -0.25 + 0.5 * 0.5 = 0
    returns = A + V = (0.5, 0.75, 1.0)"""
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0]])
    values = torch.tensor([[0.5, 0.25, 0.5, 9.0]])
    mask = torch.tensor([[True, True, True, False]])
    adv, ret = gae(rewards, values, mask, 1.0, 0.5)
    assert adv.tolist() == [[0.0, 0.5, 0.5, 0.0]]
    assert ret.tolist() == [[0.5, 0.75, 1.0, 0.0]]


def test_whiten_mean0_std1():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64) * 2 - 3
    mask = torch.rand(5, 8, generator=g) > 0.4
    w = whiten(x, mask)
    assert abs(w[mask].mean().item()) < 1e-12
    assert w[mask].std().item() == pytest.approx(1.0, rel=1e-7)
    w_all = whiten(x)
    assert abs(w_all.mean().item()) < 1e-12 and w_all.std().item() == pytest.approx(1.0, rel=1e-7)


def test_explained_variance():
    ret = torch.tensor([[1.0, 2.0, 3.0, 99.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    assert explained_variance(ret, ret, mask).item() == 1.0
    # constant prediction at the mean: Var[ret - 2] = Var[ret] -> 0
    assert explained_variance(torch.full_like(ret, 2.0), ret, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert explained_variance(ret, torch.ones_like(ret), mask).item() == 0.0  # Var[returns] = 0: defined as 0


def test_grpo_equal_rewards_give_zero_and_by_hand():
    """Group (1, 2, 3, 6): mean 3, unbiased std sqrt((4 + 1 + 0 + 9) / 3) = sqrt(14/3) = 2.1602...
    -> A = (-2, -1, 0, 3) / (std + 1e-4). Dr. GRPO (scale_by_std=False): A = (-2, -1, 0, 3).
    A group of equal rewards (5, 5, 5, 5) gives exactly 0 either way."""
    r = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0], dtype=torch.float64)
    std = (14 / 3) ** 0.5
    expected = torch.tensor([-2.0, -1.0, 0.0, 3.0], dtype=torch.float64) / (std + 1e-4)
    a = grpo_advantages(r, 4)
    torch.testing.assert_close(a[:4], expected, rtol=1e-12, atol=0)
    assert torch.equal(a[4:], torch.zeros(4, dtype=torch.float64))
    a_dr = grpo_advantages(r, 4, scale_by_std=False)
    assert a_dr.tolist() == [-2.0, -1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        grpo_advantages(r, 3)


def test_rloo_by_hand():
    """Group (1, 2, 3, 6): leave-one-out baselines (11/3, 10/3, 3, 2) -> A = (-8/3, -4/3, 0, 4);
    equivalently G/(G-1) * (r - mean) = 4/3 * (-2, -1, 0, 3). Group (0, 1): A = (-1, 1)."""
    a = rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64), 4)
    torch.testing.assert_close(a, torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0], dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert rloo_advantages(torch.tensor([0.0, 1.0]), 2).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError):
        rloo_advantages(torch.tensor([1.0, 2.0]), 1)


def test_last_token_mask():
    mask = torch.tensor([[True, True, False], [False, False, False], [False, True, True]])
    assert last_token_mask(mask).tolist() == [[False, True, False], [False, False, False], [False, False, True]]


def test_kl_penalised_rewards_by_hand():
    """beta = 0.1, row 0 has 3 real tokens with k1 = logp - ref = (0.5, -0.2, 1.0) and score 2:
    rewards = -0.1 * (0.5, -0.2, 1.0) + (0, 0, 2) = (-0.05, 0.02, 1.9), pad 0.
    Row 1 (2 tokens, k1 = (0, 0.3), score -1, no EOS, penalty 0.5): (0, -0.03 - 1.5)."""
    logp = torch.tensor([[-1.0, -2.0, -0.5, -7.0], [-1.0, -1.0, -3.0, -3.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.8, -1.5, 0.0], [-1.0, -1.3, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    score = torch.tensor([2.0, -1.0], dtype=torch.float64)
    rewards, kl = kl_penalised_rewards(score, logp, ref, mask, beta=0.1, no_eos_penalty=0.5,
                                       has_eos=torch.tensor([True, False]))
    expected = torch.tensor([[-0.05, 0.02, 1.9, 0.0], [0.0, -0.03 - 1.5, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(rewards, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -0.2, 1.0, 0.0], [0.0, 0.3, 0.0, 0.0]],
                                                dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # the score lands once per row: reward sum = (penalised) score - beta * sequence KL
    effective_score = torch.tensor([2.0, -1.5], dtype=torch.float64)
    torch.testing.assert_close(rewards.sum(1), effective_score - 0.1 * kl.sum(1), rtol=1e-12, atol=1e-12)


def test_kl_penalised_rewards_zero_kl_at_reference_and_estimators():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    mask = torch.ones(3, 5, dtype=torch.bool)
    score = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    for est in ("k1", "k2", "k3"):
        rewards, kl = kl_penalised_rewards(score, logp, logp.clone(), mask, beta=0.5, estimator=est)
        assert torch.equal(kl, torch.zeros_like(kl))
        assert rewards[:, -1].tolist() == [1.0, 2.0, 3.0] and torch.equal(rewards[:, :-1], torch.zeros(3, 4).double())
    with pytest.raises(ValueError):
        kl_penalised_rewards(score, logp, logp, mask, beta=0.1, no_eos_penalty=1.0)


# ---------------------------------------------------------------------------------------- DAPO, REINFORCE++
def test_informative_groups():
    """Groups of 2: (1, 1) all equal, (0, 1) informative, (0.5, 0.5) all equal, (-1, 1e-9) informative."""
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, -1.0, 1e-9])
    assert informative_groups(r, 2).tolist() == [False, True, False, True]
    # exactly the groups whose GRPO advantages are not all 0
    assert (grpo_advantages(r, 2).view(-1, 2) != 0).any(dim=1).tolist() == [False, True, False, True]


def test_overlong_penalty_by_hand():
    """DAPO eq. 13 with L_max = 10, L_cache = 4: the window is (6, 10].
      |y| = 5, 6 -> 0;  7 -> (6 - 7) / 4 = -0.25;  9 -> -0.75;  10 -> -1;  12 (> L_max) -> -1.
    factor 0.5 halves every value."""
    lengths = torch.tensor([5, 6, 7, 9, 10, 12])
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4), torch.tensor([0.0, 0.0, -0.25, -0.75, -1.0, -1.0]),
                               rtol=0, atol=0)
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4, 0.5),
                               torch.tensor([0.0, 0.0, -0.125, -0.375, -0.5, -0.5]), rtol=0, atol=0)
    for bad in (0, 11):
        with pytest.raises(ValueError, match="overlong buffer"):
            overlong_penalty(lengths, 10, bad)


def test_reinforce_pp_by_hand():
    """Two responses (one group), beta 0.5, scores (1, 0); log pi_old - log pi_ref = (1, 2) on row 0, (0) on row 1.
      rewards (k1 in the reward, score at the last token): row 0: (-0.5, -1 + 1 = 0); row 1: (0)
      returns G_t (gamma 1): row 0: (-0.5, 0); row 1: (0)
      global normalisation over the 3 tokens: mean -1/6, Bessel variance ((1/3)^2 + 2 (1/6)^2) / 2 = 1/12,
      A = (G - mean) / sqrt(1/12 + 1e-8) = (-1/3, 1/6 | 1/6) / sqrt(1/12 + 1e-8)   (about (-1.1547, 0.5774 | 0.5774))
    REINFORCE++-baseline (group_size 2) first centres the scores: (0.5, -0.5); rewards row 0: (-0.5, -0.5), row 1:
    (-0.5); returns (-1, -0.5 | -0.5), mean -2/3: the same deviations, the same advantages (a coincidence of these
    numbers). gamma 0.5 (plain): returns row 0 (-0.5 + 0.5 * 0, 0) = (-0.5, 0): unchanged here, so use the
    baseline: row 0 (-0.5 - 0.25, -0.5) = (-0.75, -0.5), row 1 (-0.5): mean -7/12, deviations (-1/6, 1/12, 1/12),
    variance (1/36 + 2/144) / 2 = 1/48."""
    ref = torch.zeros(2, 3, dtype=torch.float64)
    lp = torch.tensor([[1.0, 2.0, 9.0], [0.0, 9.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    scores = torch.tensor([1.0, 0.0], dtype=torch.float64)
    expected = torch.tensor([[-1 / 3, 1 / 6, 0.0], [1 / 6, 0.0, 0.0]], dtype=torch.float64) / math.sqrt(1 / 12 + 1e-8)
    adv, kl = reinforce_pp_advantages(scores, lp, ref, mask, beta=0.5)
    torch.testing.assert_close(adv, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(kl, torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64))
    adv_b, _ = reinforce_pp_advantages(scores, lp, ref, mask, beta=0.5, group_size=2)
    torch.testing.assert_close(adv_b, expected, rtol=1e-12, atol=0)
    adv_g, _ = reinforce_pp_advantages(scores, lp, ref, mask, beta=0.5, group_size=2, gamma=0.5)
    expected_g = torch.tensor([[-1 / 6, 1 / 12, 0.0], [1 / 12, 0.0, 0.0]], dtype=torch.float64) / math.sqrt(
        1 / 48 + 1e-8)
    torch.testing.assert_close(adv_g, expected_g, rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_equals_its_formula_written_as_loops(seed, gamma):
    """One group of G = 5 responses of random lengths: the vectorised estimator equals the formula of its docstring
    written token by token (reward-to-go from the end of each response, then one mean and one Bessel std over every
    real token of the batch), with and without the group baseline."""
    g = torch.Generator().manual_seed(seed)
    B, T, beta = 5, 7, 0.1
    lp = -torch.rand(B, T, generator=g, dtype=torch.float64)
    ref = -torch.rand(B, T, generator=g, dtype=torch.float64)
    scores = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    for baseline in (False, True):
        s = scores - scores.mean() if baseline else scores
        returns = []
        for b in range(B):
            n, running, row = int(lengths[b]), 0.0, [0.0] * int(lengths[b])
            for t_ in reversed(range(n)):
                r = -beta * float(lp[b, t_] - ref[b, t_]) + (float(s[b]) if t_ == n - 1 else 0.0)
                running = r + gamma * running
                row[t_] = running
            returns.append(row)
        flat = [x for row in returns for x in row]
        mean = sum(flat) / len(flat)
        std = math.sqrt(sum((x - mean) ** 2 for x in flat) / (len(flat) - 1) + 1e-8)
        expected = torch.zeros(B, T, dtype=torch.float64)
        for b, row in enumerate(returns):
            expected[b, :len(row)] = torch.tensor([(x - mean) / std for x in row], dtype=torch.float64)
        adv, _ = reinforce_pp_advantages(scores, lp, ref, mask, beta, group_size=B if baseline else None,
                                         gamma=gamma)
        torch.testing.assert_close(adv, expected, rtol=1e-10, atol=1e-12)
