"""Rollout masking with a STUB model first (deterministic next tokens), then exactness on a tiny real Llama."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.algorithms import online
from rlhfkit.rollout import episodes as R
from rlhfkit.rollout import score

V, EOS, PAD, STOP = 16, 1, 0, 9


class StubLM(torch.nn.Module):
    """Next token = current token + 1, and EOS right after token STOP: a prompt ending in token a gets the
    response a+1, ..., STOP, EOS (length STOP - a + 1) with probability ~1. Logits depend only on the current
    token, so the KV cache is irrelevant. Shaped like an HF causal LM for generate.sample and TokenLogprobs."""

    base_model_prefix = "body"

    def __init__(self):
        super().__init__()
        self.body = _Body()
        self.head = torch.nn.Linear(V, V, bias=False)
        nxt = torch.full((V,), EOS)
        nxt[2:STOP] = torch.arange(3, STOP + 1)
        with torch.no_grad():
            self.head.weight.copy_(50.0 * torch.nn.functional.one_hot(nxt, V).float().T)

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        h = self.body(input_ids).last_hidden_state
        return SimpleNamespace(logits=self.head(h), past_key_values=past_key_values)


class _Body(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, V)
        with torch.no_grad():
            self.emb.weight.copy_(torch.eye(V))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return SimpleNamespace(last_hidden_state=self.emb(input_ids))


def decode(ids):
    return " ".join(str(i) for i in ids if i not in (EOS, PAD))


def length_reward(prompts, responses):
    return [float(len(r.split())) for r in responses]


def stub_rollout(prompt_ids, max_new_tokens=8, **kw):
    return R.rollout(StubLM(), prompt_ids, [str(p) for p in prompt_ids], score.python_reward(length_reward),
                     eos_id=EOS, pad_id=PAD, decode=decode, max_new_tokens=max_new_tokens,
                     generator=torch.Generator().manual_seed(0), forward_batch_size=2, **kw)


def test_stub_masks_padding_and_eos():
    # prompts of different lengths ending in 7, 4, 2 -> responses [8,9,EOS], [5..9,EOS], [3..9,EOS] but cut at 5
    prompts = [[5, 6, 7], [4], [3, 2]]
    r = stub_rollout(prompts, max_new_tokens=5)
    want = [[8, 9, EOS], [5, 6, 7, 8, 9], [3, 4, 5, 6, 7]]
    assert r.has_eos.tolist() == [True, False, False]
    assert r.lengths.tolist() == [3, 5, 5]
    T = max(len(p) + len(w) for p, w in zip(prompts, want))
    assert r.input_ids.shape == (3, T)
    for b, (p, w) in enumerate(zip(prompts, want)):
        n = len(p) + len(w)
        assert r.input_ids[b, :n].tolist() == p + w  # right-padded prompt + response
        assert (r.input_ids[b, n:] == PAD).all()
        assert r.attention[b].tolist() == [True] * n + [False] * (T - n)
        assert r.response_mask[b].tolist() == [False] * len(p) + [True] * len(w) + [False] * (T - n)
    # log-probs (B, T-1): ~0 (the stub is certain) on response tokens, exactly 0 elsewhere
    assert r.logprobs.shape == r.mask.shape == (3, T - 1)
    assert (r.logprobs[~r.mask] == 0).all()
    assert r.logprobs[r.mask].abs().max() < 1e-6
    # scored on decoded text without EOS/pad: the reward is the number of response tokens excluding EOS
    assert r.texts == ["8 9", "5 6 7 8 9", "3 4 5 6 7"]
    assert r.scores.tolist() == [2.0, 5.0, 5.0]


def test_stub_reference_kl_is_exactly_zero_and_values_aligned():
    stub = StubLM()
    ref = copy.deepcopy(stub)
    value_fn = lambda ids, attn: ids[:, :-1].float()  # "value" = the current token, to check the alignment
    r = R.rollout(stub, [[6], [7, 8]], ["a", "b"], score.python_reward(length_reward), eos_id=EOS, pad_id=PAD,
                  decode=decode, max_new_tokens=8, forward_batch_size=1, ref_policy=ref, value_fn=value_fn)
    assert torch.equal(r.logprobs, r.ref_logprobs)
    # values[t] belongs to the state that emits input_ids[t+1]: row 0 = [6 | 7 8 9 EOS] -> states 6,7,8,9
    assert r.values[0][r.mask[0]].tolist() == [6.0, 7.0, 8.0, 9.0]


def test_temperature_zero_is_refused():
    with pytest.raises(ValueError, match="temperature > 0"):
        stub_rollout([[2]], temperature=0.0)


@pytest.mark.parametrize("completions,mb,micro,acc,world,ok", [
    (16, 2, 8, 1, 1, True), (16, 2, 4, 2, 1, True), (16, 2, 2, 2, 2, True),
    (16, 3, 8, 1, 1, False), (16, 2, 4, 1, 1, False), (16, 1, 8, 1, 1, False)])
def test_batch_semantics_divisibility(completions, mb, micro, acc, world, ok):
    if ok:
        assert online.check_batch(completions, mb, micro, acc, world) == completions // mb
    else:
        with pytest.raises(ValueError, match="rollout_batch_size"):
            online.check_batch(completions, mb, micro, acc, world)


def test_real_model_ratio_one_and_kl_zero(toy_dir):
    """Tiny Llama: the log-probs a trainer recomputes on the same rows (same chunk shapes) equal the rollout's
    exactly, at the sampling temperature; a frozen copy as reference gives KL exactly 0."""
    from rlhfkit import models
    from rlhfkit.models.logps import TokenLogprobs

    tok = models.load_tokenizer(str(toy_dir / "tok"))
    model = models.load_causal_lm(str(toy_dir / "model"), tok)
    prompts = [[{"role": "user", "content": f"What is {a} plus 2?"}] for a in range(4)]
    ids = R.encode_prompts(tok, prompts, 64)
    r = R.rollout(model, ids, prompts, score.python_reward(length_reward), eos_id=tok.eos_token_id,
                  pad_id=tok.pad_token_id, decode=lambda x: tok.decode(x, skip_special_tokens=True),
                  max_new_tokens=6, temperature=0.7, generator=torch.Generator().manual_seed(1),
                  forward_batch_size=2, ref_policy=copy.deepcopy(model))
    assert torch.equal(r.logprobs, r.ref_logprobs)
    model.train()
    again = TokenLogprobs(model)(r.input_ids[2:4], r.attention[2:4], r.response_mask[2:4], 0.7)["logprobs"]
    assert torch.equal(again, r.logprobs[2:4])  # ratio exactly 1
    hot = TokenLogprobs(model)(r.input_ids[2:4], r.attention[2:4], r.response_mask[2:4], 1.0)["logprobs"]
    assert not torch.allclose(hot[r.mask[2:4]], r.logprobs[2:4][r.mask[2:4]])  # the temperature matters


def test_rows_layout_gives_the_padded_rows_logprobs_and_entropy():
    """G responses of each prompt as right-padded rows, forwarded prompt-shared (layout.rows_layout): log-probs and
    entropies land in the same (B, T-1) cells as the padded path's (float64), zero elsewhere, with fewer tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhfkit import data as data_lib
    from rlhfkit.models.layout import rows_layout
    from rlhfkit.models.logps import TokenLogprobs

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).double().eval()
    seqs, masks = [], []
    for p in ([5, 6, 7], [8, 9], [10, 11, 12, 13]):
        for g in range(3):
            r = [20 + g] * (g + 2)
            seqs.append(p + r)
            masks.append([False] * len(p) + [True] * len(r))
    ids, att, rm = data_lib.pad_right(seqs, 0, masks)
    lp = TokenLogprobs(model)
    padded = lp(ids, att, rm, 0.7, with_entropy=True)
    lay = rows_layout(ids, rm, 0)
    shared = lp(ids, att, rm, 0.7, with_entropy=True, layout=lay)
    for key in ("logprobs", "entropy"):
        torch.testing.assert_close(shared[key], padded[key], rtol=1e-12, atol=1e-12)
    assert int((shared["logprobs"] != 0).sum()) == int(rm[:, 1:].sum())
    assert lay["input_ids"].numel() < ids.numel()  # each prompt once: 9 + 27 response tokens (+ row padding)


def test_reference_logprobs_and_scores_are_normal_tensors_autograd_can_save():
    """chunked_logprobs and RewardModel scoring run under inference_mode for speed; what they return must still
    be usable in a loss that autograd differentiates (an inference tensor saved for backward is an error)."""
    from rlhfkit.rollout.score import chunked_logprobs

    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0))
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 0]])
    att = ids != 0
    resp = torch.tensor([[False, False, True, True], [False, False, True, False]])
    ref = chunked_logprobs(model, ids, att, resp, 1.0, 8, share_prompt_pad_id=0)
    assert not ref.is_inference()
    w = torch.ones_like(ref, requires_grad=True)
    (w * ref).exp().sum().backward()  # mul and exp save `ref`-derived tensors for backward
    assert w.grad is not None
