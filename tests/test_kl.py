"""rlhfkit.math.kl: Schulman's k1/k2/k3 estimators on distributions with a known KL; KL controllers."""
import math

import pytest
import torch

from rlhfkit.math.kl import AdaptiveKLController, FixedKLController, kl_estimate, kl_k1, kl_k2, kl_k3

P = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # policy pi
Q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)  # reference pi_ref
# exact KL(pi || pi_ref) = sum p log p/q = 0.5 ln 2.5 + 0.3 ln 0.6 + 0.2 ln(2/3) = 0.2253...
EXACT = float((P * (P / Q).log()).sum())


def test_exact_kl_value():
    assert EXACT == pytest.approx(0.5 * math.log(2.5) + 0.3 * math.log(0.6) + 0.2 * math.log(2 / 3), rel=1e-12)


def test_expectations_under_pi_are_exact():
    """Weighting each category by pi(x) (the exact expectation over samples of pi):
    E[k1] = KL exactly, E[k3] = sum p (q/p - 1) - E[log q/p] = (1 - 1) + KL = KL exactly; k2 is biased."""
    lp, lq = P.log(), Q.log()
    assert float((P * kl_k1(lp, lq)).sum()) == pytest.approx(EXACT, rel=1e-12)
    assert float((P * kl_k3(lp, lq)).sum()) == pytest.approx(EXACT, rel=1e-12)
    assert float((P * kl_k2(lp, lq)).sum()) != pytest.approx(EXACT, rel=1e-3)


def test_sample_means_approach_exact_kl_and_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    n = 400_000
    x = torch.multinomial(P, n, replacement=True, generator=g)
    lp, lq = P.log()[x], Q.log()[x]
    k1, k3 = kl_k1(lp, lq), kl_k3(lp, lq)
    # standard error of the k1 mean is sqrt(Var/n) ~ 0.5/632 ~ 8e-4; 5e-3 is > 6 sigma
    assert float(k1.mean()) == pytest.approx(EXACT, abs=5e-3)
    assert float(k3.mean()) == pytest.approx(EXACT, abs=5e-3)
    assert bool((k3 >= 0).all()) and bool((kl_k2(lp, lq) >= 0).all())
    assert bool((k1 < 0).any())  # k1 per token can be negative ("KL became negative", PITFALLS)
    # k3 has lower variance than k1 here (the reason to prefer it as a loss term)
    assert float(k3.var()) < float(k1.var())


def test_policy_equals_reference_gives_exactly_zero():
    lp = torch.log(torch.tensor([0.1, 0.7, 0.2]))
    for name in ("k1", "k2", "k3"):
        assert torch.equal(kl_estimate(lp, lp.clone(), name), torch.zeros(3))


def test_hand_values():
    """log pi = log 0.5, log pi_ref = log 0.25: log r = log(ref/pi) = -ln 2.
    k1 = ln 2 = 0.693147..., k2 = (ln 2)^2 / 2 = 0.240227..., k3 = (0.5 - 1) + ln 2 = 0.193147..."""
    lp, lq = torch.tensor([math.log(0.5)], dtype=torch.float64), torch.tensor([math.log(0.25)], dtype=torch.float64)
    assert kl_k1(lp, lq).item() == pytest.approx(math.log(2), rel=1e-12)
    assert kl_k2(lp, lq).item() == pytest.approx(math.log(2) ** 2 / 2, rel=1e-12)
    assert kl_k3(lp, lq).item() == pytest.approx(-0.5 + math.log(2), rel=1e-12)
    with pytest.raises(ValueError):
        kl_estimate(lp, lq, "k4")


def test_k3_precise_near_zero():
    """For log r = d small, k3 = e^d - 1 - d = d^2/2 + d^3/6 + ...; at d = 1e-6 that is 5.0000017e-13, which a naive
    exp(d) - 1 - d in float32 would round to 0 or garbage."""
    d = 1e-6
    lp, lq = torch.tensor([0.0], dtype=torch.float64), torch.tensor([d], dtype=torch.float64)
    assert kl_k3(lp, lq).item() == pytest.approx(d * d / 2 + d ** 3 / 6, rel=1e-6)


def test_adaptive_controller_by_hand():
    """Ziegler et al. 2019: e = clip(KL/target - 1, -0.2, 0.2); beta *= 1 + e * n / horizon.
    beta 0.1, target 6, horizon 10000, n 256:
      KL 6.6 -> e = 0.1            -> beta = 0.1 * (1 + 0.1 * 0.0256) = 0.100256
      KL 60  -> e = 9 clipped 0.2  -> beta = 0.1 * (1 + 0.2 * 0.0256) = 0.100512
      KL 0   -> e = -1 clipped -0.2 -> beta = 0.1 * (1 - 0.2 * 0.0256) = 0.099488"""
    for kl, expected in [(6.6, 0.100256), (60.0, 0.100512), (0.0, 0.099488)]:
        c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
        assert c.update(kl, 256) == pytest.approx(expected, rel=1e-12)
        assert c.value == pytest.approx(expected, rel=1e-12)
    # two updates compound
    c = AdaptiveKLController(0.1, 6.0, 10_000)
    c.update(6.6, 256)
    c.update(6.6, 256)
    assert c.value == pytest.approx(0.1 * 1.00256 ** 2, rel=1e-12)
    # at the target beta does not move; state round-trips
    c2 = AdaptiveKLController(0.3, 6.0, 100)
    c2.update(6.0, 50)
    assert c2.value == 0.3
    c3 = AdaptiveKLController(1.0, 1.0, 1.0)
    c3.load_state_dict(c.state_dict())
    assert (c3.value, c3.target, c3.horizon) == (c.value, 6.0, 10_000)


def test_fixed_controller():
    c = FixedKLController(0.05)
    assert c.update(100.0, 1000) == 0.05 and c.value == 0.05
