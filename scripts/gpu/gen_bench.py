"""Generation speed on a GPU, split into its parts: `python3 scripts/gpu/gen_bench.py MODEL PROMPTS [ROWS ...]`.

For each batch size (default 16 = the GRPO workload's 4 prompts x 4 generations), samples 32 new tokens at
temperature 1 under bf16 autocast (as the online trainers do), 5 times after a warm-up, through the CUDA-graph decoder
and, for comparison, the eager one (RLHFKIT_CUDA_GRAPHS=0). Prints one JSON line per setting: tokens/s, the time of
`start` (weights, prefill, graph capture) and of the decode loop, and the bandwidth bound (every step reads the bf16
weights once: rows / (2 x params / measured copy bandwidth))."""
import json
import os
import sys
import time

import torch

from rlhfkit import data as data_lib
from rlhfkit.rollout import fastdecode, generate
from rlhfkit import models


def bandwidth() -> float:
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    return 10 * 2 * x.numel() / (time.perf_counter() - t)  # bytes read + written


def main() -> None:
    model_dir, prompts_path, *rows = sys.argv[1:]
    tok = models.load_tokenizer(model_dir)
    model = models.load_causal_lm(model_dir, tok).cuda().eval()
    prompts = [data_lib.encode_prompt(tok, r["prompt"]) for r in data_lib.load_rows(prompts_path)]
    n_params = sum(p.numel() for p in model.parameters())
    bw = bandwidth()
    spent = {"start": 0.0}
    start = fastdecode.LlamaDecoder.start

    def timed_start(self, *a, **k):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = start(self, *a, **k)
        torch.cuda.synchronize()
        spent["start"] += time.perf_counter() - t
        return out

    fastdecode.LlamaDecoder.start = timed_start
    for B in [int(r) for r in rows] or [16]:
        batch = [p for p in prompts[: B // 4] for _ in range(4)]
        for graphs in ("1", "0"):
            os.environ["RLHFKIT_CUDA_GRAPHS"] = graphs
            g = torch.Generator(device="cuda").manual_seed(0)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                generate.sample(model, batch, tok.eos_token_id, tok.pad_token_id, 32, 1.0, generator=g)  # warm-up
                torch.cuda.synchronize()
                spent["start"], n_tok, t = 0.0, 0, time.perf_counter()
                for _ in range(5):
                    s = generate.sample(model, batch, tok.eos_token_id, tok.pad_token_id, 32, 1.0, generator=g)
                    n_tok += sum(len(r) for r in s.response_ids)
                torch.cuda.synchronize()
                wall = time.perf_counter() - t
            print(json.dumps({"rows": B, "cuda_graphs": graphs == "1", "tokens_per_s": round(n_tok / wall, 1),
                              "start_s_per_call": round(spent["start"] / 5, 4),
                              "loop_s_per_call": round((wall - spent["start"]) / 5, 4),
                              "bound_tokens_per_s": round(B / (2 * n_params / bw), 1),
                              "copy_bandwidth_tb_s": round(bw / 1e12, 2), "n_params": n_params}), flush=True)


if __name__ == "__main__":
    main()
