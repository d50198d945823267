"""Would per-completion causal attention make a DPO step faster? A measurement, not a library change.

In a prefix-shared block [prompt | chosen | rejected] each completion attends to the prompt and causally to itself,
so the block is two plain causal sequences, [prompt | chosen] and [prompt | rejected], that share the prompt. The
shipped forward (`modeling._rows_attention`) runs one SDPA call per row under an explicit (n, n) block mask, which
costs n^2 per row. This probe swaps in an attention function that gathers each causal sequence (the keys a row's
last-of-sequence token may see) and runs SDPA with is_causal=True on it, about (P + C)^2 / 2 + (P + R)^2 / 2, and
checks that the policy's log-probs are unchanged. Then it times one fwd+bwd per bench batch, alternating the two.

Usage: python scripts/causal_segments_probe.py   (needs bench-data/ from ../shared/bench/make_tiny.py)
"""

import statistics
import time

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from rlhfkit import data as data_lib
from rlhfkit.algorithms import dpo
from rlhfkit.models import modeling
from rlhfkit import models

_segments: dict[int, list[torch.Tensor]] = {}  # id(row mask) -> index tensors of its causal sequences


def segments(m: torch.Tensor) -> list[torch.Tensor]:
    """The causal sequences of a row mask: from the last token back, each uncovered token's allowed keys."""
    if id(m) not in _segments:
        allowed, n = m[0, 0], m.shape[-1]
        covered = torch.zeros(n, dtype=torch.bool)
        out = []
        for i in range(n - 1, -1, -1):
            if not covered[i]:
                idx = allowed[i].nonzero().squeeze(1)
                covered[idx] = True
                out.append(idx)
        _segments[id(m)] = out[::-1]
    return _segments[id(m)]


def causal_segments_attention(module, query, key, value, attention_mask, rlhfkit_rows=None, **kwargs):
    if rlhfkit_rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out = []
    for a, b, m, _ in rlhfkit_rows:
        q, k, v = query[:, :, a:b], key[:, :, a:b], value[:, :, a:b]
        row = q.new_zeros(q.shape[0], b - a, q.shape[1], q.shape[3])  # (1, n, heads, d), SDPA's output layout
        done = torch.zeros(b - a, dtype=torch.bool)
        for idx in segments(m):
            o = sdpa_attention_forward(module, q[:, :, idx], k[:, :, idx], v[:, :, idx], None, is_causal=True,
                                       **{k_: v_ for k_, v_ in kwargs.items() if k_ != "is_causal"})[0]
            new = ~done[idx]  # the shared prompt: written once (every sequence computes it identically)
            row = row.index_copy(1, idx[new], o[:, new])
            done[idx] = True
        out.append(row)
    return torch.cat(out, 1), None


if __name__ == "__main__":
    torch.set_num_threads(2)
    cfg = dpo.Config(model="bench-data/small", data="bench-data/preference.jsonl", output_dir="/tmp/seg",
                     loss=["sigmoid"], max_length=256)
    tok = models.load_tokenizer(cfg.model)
    model = models.load_causal_lm(cfg.model, tok, dtype="fp32")
    ex = dpo.tokenise(cfg, tok, data_lib.load_rows(cfg.data, cfg.split, cfg.column_map, cfg.skip_invalid), {})
    module = dpo.SequenceLogprobs(model)
    lays = [dpo.build_layout([(e.prompt, list(e.completions)) for e in ex[8 * i:8 * i + 8]], tok.pad_token_id, True)
            for i in range(12)]
    modeling.padding_free(modeling.backbone(model))  # registers the shipped function

    def use(fn):
        AttentionInterface.register(modeling.ROWS_ATTENTION, fn)
        _segments.clear()

    def run_all() -> list[float]:
        times = []
        for lay in lays:
            t = time.perf_counter()
            dpo.run_layout(module, lay, torch.device("cpu")).sum().backward()
            times.append(time.perf_counter() - t)
            _segments.clear()  # a new micro-batch's masks
        return times[2:]

    with torch.no_grad():
        use(modeling._rows_attention)
        want = dpo.run_layout(module, lays[0], torch.device("cpu"))
        use(causal_segments_attention)
        got = dpo.run_layout(module, lays[0], torch.device("cpu"))
    print(f"max |log-prob difference| {(got - want).abs().max().item():.2e} (sequence log-probs ~{want.abs().mean():.0f})")
    results = {"shipped": [], "causal segments": []}
    for _ in range(3):
        for name, fn in (("shipped", modeling._rows_attention), ("causal segments", causal_segments_attention)):
            use(fn)
            results[name].append(statistics.median(run_all()) * 1e3)
    for name, v in results.items():
        print(f"{name:16s} median fwd+bwd per batch of 8 pairs: " + " / ".join(f"{x:.0f}" for x in v) + " ms")
