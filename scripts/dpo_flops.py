"""How many FLOPs one DPO benchmark step does in rlhfkit and in TRL: at equal matmul efficiency, the speed ratio
to expect (issue #5's target is 2x).

rlhfkit forwards [prompt | chosen | rejected] once per pair (`dpo.build_layout`: prompt shared, LM head on
completion tokens only), padding-free on Llama (`modeling.layout_hidden_states`: the linear layers see real tokens
only; each row attends within its real tokens). TRL 1.16's DPOTrainer concatenates chosen and rejected rows, each
prompt + completion, right-padded to the batch's longest (its `padding_free` is disabled in 1.16), and runs the LM
head only on completion positions (its fused LM head, `trl.trainer.utils.add_fused_lm_head`). Counted: matmul FLOPs
of the linear layers and the LM head (forward 2 x multiply-adds, backward twice the forward) and the attention
score and value products over the rows as each library shapes them. Norms, activations and the optimizer are left
out. The reference forward (on the fly) adds a third of a forward + backward for both.

Usage: python scripts/dpo_flops.py [bench-data]    (bench-data from ../shared/bench/make_tiny.py)
"""

import json
import sys
from pathlib import Path

from rlhfkit import data as data_lib
from rlhfkit.algorithms import dpo
from rlhfkit import models
from rlhfkit.engine import StepSampler


def main(root: Path) -> dict:
    cfg = json.loads((root / "small" / "config.json").read_text())
    H, I, n_layers, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * (H // cfg["num_attention_heads"])
    lin = n_layers * (2 * H * H + 2 * H * kv + 3 * H * I)  # multiply-adds per token: q, o, k, v, gate, up, down
    tok = models.load_tokenizer(str(root / "tokenizer"))
    dcfg = dpo.Config(model=str(root / "small"), data=str(root / "preference.jsonl"), max_length=256)
    rows = data_lib.load_rows(dcfg.data, "train", {}, False, expect=[data_lib.DataType.PREFERENCE])
    examples = dpo.tokenise(dcfg, tok, rows, {})
    sampler = StepSampler(len(examples), 8, 42)
    ours = {"linear": 0, "head": 0, "attention": 0, "tokens": 0, "padded_tokens": 0}
    trl = {"linear": 0, "head": 0, "attention": 0, "tokens": 0, "padded_tokens": 0}
    steps = 20
    for step in range(steps):
        idx = sampler.indices(step)
        lay = dpo.build_layout([(examples[i].prompt, list(examples[i].completions)) for i in idx],
                               tok.pad_token_id, True)
        row_tokens = (lay.position_ids >= 0).sum(1)
        ours["tokens"] += lay.tokens
        ours["padded_tokens"] += lay.input_ids.numel()
        ours["linear"] += 2 * lin * lay.tokens
        ours["head"] += 2 * H * V * len(lay.labels)
        ours["attention"] += n_layers * 4 * H * int((row_tokens ** 2).sum())
        seqs = [len(examples[i].prompt) + len(c) for i in idx for c in examples[i].completions]
        T = max(seqs)
        trl["tokens"] += sum(seqs)
        trl["padded_tokens"] += len(seqs) * T
        trl["linear"] += 2 * lin * len(seqs) * T
        trl["head"] += 2 * H * V * len(lay.labels)  # the same completion tokens as rlhfkit's head
        trl["attention"] += n_layers * len(seqs) * 4 * T * T * H
    res = {}
    for name, d in (("rlhfkit", ours), ("trl", trl)):
        fwd = (d["linear"] + d["head"] + d["attention"]) / steps
        res[name] = {"gflop_per_step_precomputed": round(3 * fwd / 1e9, 2),  # forward + backward (2x)
                     "gflop_per_step_on_the_fly": round(4 * fwd / 1e9, 2),  # + the reference forward
                     "tokens_per_step": d["tokens"] / steps,
                     "padded_tokens_per_step": d["padded_tokens"] / steps,
                     "share": {k: round(d[k] / (d["linear"] + d["head"] + d["attention"]), 3)
                               for k in ("linear", "head", "attention")}}
    res["trl_over_rlhfkit_flops"] = round(res["trl"]["gflop_per_step_precomputed"]
                                          / res["rlhfkit"]["gflop_per_step_precomputed"], 3)
    return res


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-data"))))
