"""The sampler: stop at EOS, truncation after it, left padding that doesn't change positions, temperature."""

import torch

from rlhfkit.rollout.generate import _filter_logits, sample


class StubLM(torch.nn.Module):
    """Emits token (position + 10) until position `stop_at`, then EOS (id 2), whatever the input.

    Reads `position_ids`, so it proves the sampler passes real positions (left padding must not shift them).
    """

    def __init__(self, stop_at: int, vocab: int = 64):
        super().__init__()
        self.stop_at, self.vocab = stop_at, vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True):
        B, T = input_ids.shape
        pos = position_ids[:, -1]  # position of the last input token
        nxt = torch.where(pos + 1 >= self.stop_at, torch.full_like(pos, 2), pos + 11)
        logits = torch.full((B, T, self.vocab), -1e9)
        logits[torch.arange(B), -1, nxt] = 0.0
        return type("Out", (), {"logits": logits, "past_key_values": past_key_values})()


def test_stops_at_eos_and_positions_ignore_left_padding():
    model = StubLM(stop_at=6)
    s = sample(model, [[5, 5, 5], [7]], eos_id=2, pad_id=0, max_new_tokens=10, temperature=0.0)
    # prompt of 3 tokens: positions 0..2, generates 13 (pos 3), 14, 15, then EOS at position 6
    assert s.response_ids[0] == [13, 14, 15, 2]
    # the 1-token prompt is left-padded by 2 but its positions start at 0: generates 11..15 then EOS
    assert s.response_ids[1] == [11, 12, 13, 14, 15, 2]
    assert s.has_eos == [True, True]


def test_max_new_tokens_truncates_without_eos():
    s = sample(StubLM(stop_at=100), [[1, 1]], eos_id=2, pad_id=0, max_new_tokens=4, temperature=0.0)
    assert s.response_ids == [[12, 13, 14, 15]] and s.has_eos == [False]


def test_top_k_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(_filter_logits(logits, top_k=2, top_p=1.0)).tolist() == [[False, False, True, True]]
    # top_p 0.7: the smallest prefix with mass >= 0.7 is {0.5, 0.3}
    assert torch.isinf(_filter_logits(logits, top_k=0, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert not torch.isinf(_filter_logits(logits, 0, 1.0)).any()


def test_temperature_sampling_matches_distribution():
    class Fixed(StubLM):
        def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True):
            B, T = input_ids.shape
            logits = torch.log(torch.tensor([0.0, 0.0, 0.2, 0.8]).clamp(min=1e-30)).expand(B, T, 4).clone()
            return type("Out", (), {"logits": logits, "past_key_values": past_key_values})()

    g = torch.Generator().manual_seed(0)
    s = sample(Fixed(1, 4), [[1]] * 4000, eos_id=2, pad_id=0, max_new_tokens=1, temperature=1.0, generator=g)
    frac = sum(r[0] == 3 for r in s.response_ids) / 4000
    assert abs(frac - 0.8) < 4 * (0.8 * 0.2 / 4000) ** 0.5
    # temperature 0.5 squares the odds: p(3) = 0.64 / (0.64 + 0.04)
    s = sample(Fixed(1, 4), [[1]] * 4000, eos_id=2, pad_id=0, max_new_tokens=1, temperature=0.5, generator=g)
    frac = sum(r[0] == 3 for r in s.response_ids) / 4000
    p = 0.64 / 0.68
    assert abs(frac - p) < 4 * (p * (1 - p) / 4000) ** 0.5


def test_draw_matches_the_distribution_and_never_picks_a_zero():
    """draw inverts the CDF: p = [0, 0.1, 0, 0.6, 0.3, 0] over 20,000 draws per row gives each frequency within 4
    standard errors, and the zero-probability tokens (0, 2 and the last) never come up."""
    from rlhfkit.rollout.generate import draw

    p = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    g = torch.Generator().manual_seed(0)
    toks = torch.cat([draw(p.expand(1000, 6), g) for _ in range(20)])
    freq = torch.bincount(toks, minlength=6).double() / toks.numel()
    assert freq[[0, 2, 5]].sum() == 0
    se = (p.double() * (1 - p.double()) / toks.numel()).sqrt()
    assert ((freq - p.double()).abs() <= 4 * se + 1e-12).all(), freq
    # unnormalised rows (a filtered softmax need not sum to exactly 1) are scaled by their total
    assert draw(torch.tensor([[0.0, 0.0, 2.5]]), g).item() == 2


def test_inference_device_prefers_cuda_only_when_present(monkeypatch):
    """Inference-only commands (generate, sample, eval, eval-rm, serve-rm, bon) run on CUDA when there is one; without
    this they silently stay on the CPU. An explicit device always wins."""
    from rlhfkit import models
    from rlhfkit.models.rewards import RewardModel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.inference_device() == torch.device("cpu")
    assert models.inference_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert models.inference_device() == torch.device("cuda")
    assert models.inference_device("cpu") == torch.device("cpu")
    assert models.inference_device("cuda:1") == torch.device("cuda", 1)
    import inspect

    assert inspect.signature(RewardModel).parameters["device"].default == "auto"
