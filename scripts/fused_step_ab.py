"""Fused training ops, on and off, in one process: paired step times on the DPO bench workload.

The machine's noise moves a whole `rlhfkit bench` run by 10-20% between runs, which hides a 5% change. Here every
micro-batch is timed twice back to back, once with each setting (the order alternating), and the median of the
paired differences is reported. "On" is the shipped code. "Off" is, with `--ops session12` (the default), the code
before session 12: transformers' own MLP and RMSNorm forwards, the LM head's log-probs through autograd (gather
minus logsumexp), and per-row slices in the padding-free attention; with `--ops attention`, the code before session
13: SDPA per row in the padding-free attention instead of the C block attention (`fusedops.BlockAttention`); with
`--ops keep`, the last decoder layer's MLP on every token instead of only on those whose hidden state is read
(`modeling.layout_hidden_states(..., needed=...)`, session 13); with `--ops rope`, transformers' attention forward
(rotary embedding by apply_rotary_pos_emb, then the C block attention) instead of `modeling._layout_attention_forward`
(the C block attention applies the rotary embedding itself, session 13); with `--ops lse`, torch's logsumexp and
in-place softmax - onehot in the LM head's log-probs instead of the C row passes (session 13).
A step is the policy's forward + backward + fused AdamW, plus with --reference a no-grad forward of a frozen copy
(DPO with the reference on the fly).

Usage: python scripts/fused_step_ab.py [--ops session12|attention|keep|rope|lse] [--reference] [--rounds 3]
(needs bench-data/ from make_tiny.py)
"""

import argparse
import copy
import statistics
import time

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from rlhfkit import data as data_lib
from rlhfkit.algorithms import dpo
from rlhfkit.kernels import fusedops
from rlhfkit.math import logprobs
from rlhfkit.models import modeling
from rlhfkit import models


def sliced_rows_attention(module, query, key, value, attention_mask, rlhfkit_rows=None, **kwargs):
    """The padding-free attention before session 12 (training forwards only: no saved or prefix keys)."""
    if rlhfkit_rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], m, **kwargs)[0]
           for a, b, m, _ in rlhfkit_rows]
    return torch.cat(out, 1), None


def autograd_summed_logps(model, h, labels, seq, n_seqs):
    """dpo.summed_logps before session 12."""
    logits = model.get_output_embeddings()(h).float()
    token_logps = logits.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return torch.zeros(n_seqs, dtype=token_logps.dtype).index_add(0, seq, token_logps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", action="store_true", help="add a reference model's no-grad forward to each step")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ops", choices=["session12", "attention", "keep", "rope", "lse"], default="session12",
                    help="which change to toggle (see the module docstring)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = dpo.Config(model="bench-data/small", data="bench-data/preference.jsonl", output_dir="/tmp/fused-ab",
                     loss=["sigmoid"], max_length=256)
    tok = models.load_tokenizer(cfg.model)
    model = models.load_causal_lm(cfg.model, tok, dtype="fp32")
    ref = copy.deepcopy(model).eval() if args.reference else None
    examples = dpo.tokenise(cfg, tok, data_lib.load_rows(cfg.data, cfg.split, cfg.column_map, cfg.skip_invalid), {})
    lays = [dpo.build_layout([(e.prompt, list(e.completions)) for e in examples[8 * i:8 * i + 8]], tok.pad_token_id,
                             True) for i in range(16)]
    policy = dpo.SequenceLogprobs(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, fused=True)  # lr 0: every step sees the same weights
    modeling.padding_free(modeling.backbone(model))
    fused = [m for net in (model, ref) if net is not None for m in net.modules() if "forward" in m.__dict__]
    fused_forward = {m: m.__dict__["forward"] for m in fused}
    shipped_summed, shipped_usable = dpo.summed_logps, fusedops.block_attention_usable
    shipped_hidden = dpo.layout_hidden_states
    shipped_fast_rows = logprobs._fast_rows
    layer_attention = {layer: layer.self_attn.forward for layer in modeling.backbone(model).layers}

    def every_token_hidden(model, ids, pos, mask, save_kv=None, needed=None):
        return shipped_hidden(model, ids, pos, mask, save_kv)[needed]
    if not fused:
        raise SystemExit("no fused modules: the CPU kernels are unavailable here")

    def use(on: bool) -> None:
        if args.ops == "lse":
            logprobs._fast_rows = shipped_fast_rows if on else (lambda logits: False)
            return
        if args.ops == "rope":
            for layer in modeling.backbone(model).layers:
                if on:
                    layer.self_attn.forward = layer_attention[layer]
                else:
                    layer.self_attn.__dict__.pop("forward", None)
            return
        if args.ops == "keep":
            dpo.layout_hidden_states = shipped_hidden if on else every_token_hidden
            return
        if args.ops == "attention":
            fusedops.block_attention_usable = shipped_usable if on else (lambda *a: False)
            return
        fusedops.block_attention_usable = lambda *a: False  # session 12's attention either way
        AttentionInterface.register(modeling.ROWS_ATTENTION,
                                    modeling._rows_attention if on else sliced_rows_attention)
        dpo.summed_logps = shipped_summed if on else autograd_summed_logps
        for m in fused:
            if on:
                m.forward = fused_forward[m]
            else:
                m.__dict__.pop("forward", None)

    def step(lay) -> float:
        t = time.perf_counter()
        if ref is not None:
            with torch.inference_mode():
                dpo.run_layout(dpo.SequenceLogprobs(ref), lay, torch.device("cpu"))
        dpo.run_layout(policy, lay, torch.device("cpu")).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    outs = []
    for on in (False, True):
        use(on)
        out = dpo.run_layout(policy, lays[0], torch.device("cpu"))
        (out * torch.linspace(-1, 1, len(out))).sum().backward()
        outs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
        opt.zero_grad(set_to_none=True)
    print(f"max |log-prob difference| {(outs[0][0] - outs[1][0]).abs().max():.2e}, max |gradient difference| "
          f"{max((a - b).abs().max().item() for a, b in zip(outs[0][1], outs[1][1])):.2e}")
    for lay in lays[:3]:  # warm-up
        for on in (False, True):
            use(on)
            step(lay)
    times = {False: [], True: []}
    for r in range(args.rounds):
        for i, lay in enumerate(lays):
            for on in ((False, True) if (i + r) % 2 == 0 else (True, False)):
                use(on)
                times[on].append(step(lay))
    diff = [b - a for a, b in zip(times[False], times[True])]
    q = statistics.quantiles(diff, n=4)
    print(f"{'with' if ref is not None else 'without'} a reference forward, {len(diff)} pairs of steps: off median "
          f"{statistics.median(times[False]) * 1e3:.1f} ms, on {statistics.median(times[True]) * 1e3:.1f} ms, "
          f"paired on - off median {statistics.median(diff) * 1e3:+.1f} ms (quartiles {q[0] * 1e3:+.1f} / "
          f"{q[2] * 1e3:+.1f})")


if __name__ == "__main__":
    main()
