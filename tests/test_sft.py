"""SFT and pretraining on a tiny model built from a config: the loss falls, every parameter changes, and
`rlhfkit generate` then reproduces the trained completions."""

import json

import torch
from safetensors.torch import load_file

from conftest import toy_rows
from rlhfkit.rollout import generate
from rlhfkit.algorithms import lm_step, pretrain, sft
from rlhfkit.engine import read_metrics


def _params(path):
    return load_file(str(path / "model.safetensors"))


def test_sft_learns_and_generate_reproduces(toy_dir, tmp_path):
    out = sft.train(sft.Config(model=str(toy_dir / "model"), data=str(toy_dir / "sft.jsonl"),
                               output_dir=str(tmp_path / "sft"), max_steps=150, micro_batch_size=16,
                               learning_rate=5e-3, warmup_steps=10, progress=False))
    log = read_metrics(out)
    first, last = log[0]["train/loss"], log[-1]["train/loss"]
    assert last < 0.5 * first, (first, last)
    before, after = _params(toy_dir / "model"), _params(out)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters that did not train: {unchanged}"
    assert (out / "config.yaml").exists()

    rows = toy_rows(64)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    gen_out = generate.run(generate.Config(model=str(out), prompts=str(tmp_path / "prompts.jsonl"),
                                           output=str(tmp_path / "gen.jsonl"), temperature=0.0, max_new_tokens=16))
    got = [json.loads(x) for x in gen_out.read_text().splitlines()]
    assert all(g["finished"] for g in got)  # EOS was learned: every greedy sample stops by itself
    # The prefix "The answer is" is always right; the sum itself needs more training than a unit test affords.
    assert all(g["completion"][0]["content"].startswith("The answer is ") for g in got)
    exact = sum(g["completion"] == r["completion"] for g, r in zip(got, rows))
    assert exact >= 8, exact  # well above chance (~1 in 10 sums)


def test_pretrain_packs_and_learns(toy_dir, tmp_path):
    out = pretrain.train(pretrain.Config(data=str(toy_dir / "lm.jsonl"), tokenizer=str(toy_dir / "tok"),
                                         output_dir=str(tmp_path / "base"), max_steps=40, block_size=32,
                                         micro_batch_size=8, hidden_size=32, num_layers=1, num_heads=2,
                                         warmup_steps=5, progress=False))
    log = read_metrics(out)
    assert log[-1]["train/loss"] < log[0]["train/loss"] - 1.0
    assert all(r["train/tokens"] == 8 * 32 * r["step"] for r in log)  # packed: no padding at all
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers reloads it
    # untied by default (pretrain.Config.tie_word_embeddings: tied ones collapsed the world's object names)
    assert not model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert not torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)


def test_pretrain_can_tie_embeddings(toy_dir, tmp_path):
    out = pretrain.train(pretrain.Config(data=str(toy_dir / "lm.jsonl"), tokenizer=str(toy_dir / "tok"),
                                         output_dir=str(tmp_path / "base"), max_steps=2, block_size=32,
                                         micro_batch_size=8, hidden_size=32, num_layers=1, num_heads=2,
                                         warmup_steps=1, progress=False, tie_word_embeddings=True))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_packed_batches_give_the_padded_loss(toy_dir):
    """Padding-free packing (block-diagonal attention through restarting position ids) == padded batches."""
    from conftest import toy_rows
    from rlhfkit import data as D
    from rlhfkit import models
    from rlhfkit.models.logps import TokenLogprobs

    tok = models.load_tokenizer(str(toy_dir / "tok"))
    model = TokenLogprobs(models.load_causal_lm(str(toy_dir / "model"), tok))
    rows = toy_rows(7, seed=5)
    rows[3] = {"prompt": "What is 1 plus 1? Think about it.", "completion": " 2"}  # a different length
    exs = [D.sft_example(tok, r, 128) for r in rows]
    ids, att, mask = D.pad_right([e.input_ids for e in exs], tok.pad_token_id, [e.loss_mask for e in exs])
    padded = model(ids, att, mask)["logprobs"].sum()
    ids, mask, pos = D.pack_rows(exs, 40, tok.pad_token_id)
    assert ids.shape[0] < len(exs)  # really packed several examples per row
    assert int(mask.sum()) == sum(sum(e.loss_mask[1:]) for e in exs)
    packed = model(ids, None, mask, packed_position_ids=pos)["logprobs"].sum()
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


def test_packed_layout_trains_as_padded_rows(toy_dir, tmp_path, monkeypatch):
    """SFT through the packed layout (CUDA's, and a CPU's without the compiled kernels: layout.use_packed) gives
    the padded batches' losses over 4 steps, up to fp32 rounding."""
    def run(name):
        out = sft.train(sft.Config(model=str(toy_dir / "model"), data=str(toy_dir / "sft.jsonl"),
                                   output_dir=str(tmp_path / name), max_steps=4, micro_batch_size=8,
                                   learning_rate=5e-3, progress=False))
        return [r["train/loss"] for r in read_metrics(out)]

    padded = run("padded")
    monkeypatch.setattr(lm_step, "use_packed", lambda model, device: True)
    packed = run("packed")
    assert len(packed) == 4 and packed[0] > 1
    assert packed == __import__("pytest").approx(padded, rel=1e-5)
