"""Can a world model read the prompt? Teacher-forced look-up skill and embedding collapse (an experiment, not a stage).

For the first 150 held-out `lookup` prompts of WORLD (a demo run's world directory), and each model directory:
- object copy: after the chat template's assistant turn and "The", is the asked object the likeliest of the 12
  object names? (chance ~1/12)
- colour copy: after "The <object> is" there, is its colour from the prompt the likeliest of the 10? (chance 1/10)
- the mean pairwise cosine of the input embeddings of the object names and of the colours (near 1: collapsed, the
  input cannot tell them apart).

    python scripts/lookup_probe.py runs/demo/world runs/demo/base runs/demo/sft

Session 9's numbers: docs/benchmarks.md ("the world model cannot read the prompt").
"""

import json
import sys

import torch

from rlhfkit import models
from rlhfkit.world import tasks


def first_token(tok, word: str) -> int:
    return tok(" " + word, add_special_tokens=False).input_ids[0]


def probe(prompts: list[str], model_dir: str) -> dict:
    tok = models.load_tokenizer(model_dir)
    model = models.load_causal_lm(model_dir, tok).eval()
    obj_ids = [first_token(tok, o) for o in tasks.OBJECTS]
    col_ids = [first_token(tok, c) for c in tasks.COLORS]

    def next_logits(text: str) -> torch.Tensor:
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        return model(ids).logits[0, -1]

    obj_ok = col_ok = 0
    with torch.no_grad():
        for p in prompts:
            task = tasks.parse_prompt(p)
            o = task.fields["o"]
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) + "The"
            obj_ok += tasks.OBJECTS[int(next_logits(text)[obj_ids].argmax())] == o
            col_ok += tasks.COLORS[int(next_logits(f"{text} {o} is")[col_ids].argmax())] == task.answer
    emb = model.get_input_embeddings().weight.detach()
    cos = {}
    for name, ids in (("objects", obj_ids), ("colors", col_ids)):
        e = torch.nn.functional.normalize(emb[ids], dim=-1)
        sim = e @ e.T
        cos[name] = round(sim[~torch.eye(len(ids), dtype=torch.bool)].mean().item(), 3)
    n = len(prompts)
    return {"model": model_dir, "prompts": n, "object_copy": round(obj_ok / n, 3), "colour_copy": round(col_ok / n, 3),
            "embedding_cosine": cos, "tied": bool(model.config.tie_word_embeddings)}


def main(world: str, model_dirs: list[str]) -> None:
    rows = [json.loads(line) for line in open(f"{world}/heldout_prompts.jsonl")]
    prompts = [r["prompt"][0]["content"] for r in rows if r["kind"] == "lookup"][:150]
    for d in model_dirs:
        print(json.dumps(probe(prompts, d)))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
