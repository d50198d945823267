"""`rlhfkit rm` on a tiny Llama built from a config: Bradley-Terry learns a systematic preference, every parameter
trains, resume is exact, ensembles average their members, normalisation gives mean 0 / std 1 on the reference, a
plain transformers reload scores the same, truncation keeps every response."""

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from rlhfkit import data as data_lib
from rlhfkit import models
from rlhfkit.algorithms import rm
from rlhfkit.engine import read_metrics
from rlhfkit.models.rewards import encode_scored, load_reward


def pref_rows(n=96, seed=0, long_prompt=False):
    """chosen = the right sum, rejected = a refusal: systematic, so a tiny RM learns it in a few dozen steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        text = f"What is {a} plus {b}?" + (" Please think about it carefully." * 6 if long_prompt else "")
        rows.append({"prompt": [{"role": "user", "content": text}],
                     "chosen": [{"role": "assistant", "content": f"The answer is {a + b}."}],
                     "rejected": [{"role": "assistant", "content": "No."}]})
    return rows


def _cfg(toy_dir, tmp_path, name, **kw):
    kw = {"max_steps": 30, "micro_batch_size": 8, "learning_rate": 3e-3, "progress": False, **kw}
    return rm.Config(model=str(toy_dir / "model"), data=str(tmp_path / "pref.jsonl"),
                     output_dir=str(tmp_path / name), **kw)


@pytest.fixture(scope="module")
def trained(toy_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    write_jsonl(tmp / "pref.jsonl", pref_rows())
    cfg = _cfg(toy_dir, tmp, "rm", norm_samples=0)
    return cfg, rm.train(cfg)


def _unique_items(rows):
    seen, items = set(), []
    for r in rows:
        for resp in (r["chosen"], r["rejected"]):
            key = json.dumps([r["prompt"], resp])
            if key not in seen:
                seen.add(key)
                items.append((r["prompt"], resp))
    return items


def test_bt_learns_and_every_parameter_trains(trained):
    cfg, out = trained
    log = read_metrics(out)
    assert len(log) == 30 and all(torch.isfinite(torch.tensor(r["train/loss"])) for r in log)
    assert {"train/loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"} <= set(log[-1])
    early = sum(r["rewards/accuracy"] for r in log[:3]) / 3
    late = sum(r["rewards/accuracy"] for r in log[-5:]) / 5
    assert late == 1.0 and late > early, (early, late)
    assert log[-1]["train/loss"] < 0.5 * log[0]["train/loss"]
    before = rm.load_backbone(cfg, cfg.seed)[0].state_dict()
    after = load_file(str(out / "model.safetensors"))
    assert set(after) == set(before)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters that did not train: {unchanged}"
    # held-out pairs of the same kind are ranked right
    rows = pref_rows(32, seed=1)
    r = load_reward(str(out))
    sc = r([x["prompt"] for x in rows], [x["chosen"][0]["content"] for x in rows])["score"]
    sr = r([x["prompt"] for x in rows], [x["rejected"][0]["content"] for x in rows])["score"]
    assert (sc > sr).float().mean() == 1.0


def test_head_is_reinitialised_small(toy_dir, tmp_path):
    write_jsonl(tmp_path / "pref.jsonl", pref_rows(8))
    cfg = _cfg(toy_dir, tmp_path, "x")
    model, _ = rm.load_backbone(cfg, 0)
    w = model.score.weight
    hidden = w.shape[1]  # 32
    assert w.std().item() == pytest.approx(1 / (hidden + 1) ** 0.5, rel=0.3)
    model2, _ = rm.load_backbone(rm.Config(**{**cfg.__dict__, "head_init_std": 1e-3}), 0)
    assert model2.score.weight.std().item() == pytest.approx(1e-3, rel=0.3)


def test_normalisation_mean0_std1_on_reference(trained):
    cfg, out = trained
    meta = json.loads((out / "rlhfkit.json").read_text())
    assert set(meta["normalize"]) >= {"gain", "bias"} and meta["max_length"] == cfg.max_length
    items = _unique_items(pref_rows())
    s = load_reward(str(out))([p for p, _ in items], [c for _, c in items])["score"]
    assert meta["normalize"]["n"] == len(items)
    assert s.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert s.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_plain_transformers_reload_scores_the_same(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg, out = trained
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.pad_token_id != tok.eos_token_id  # HF's seq-cls finds the last non-pad token by pad_token_id
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.pad_token_id == tok.pad_token_id
    items = _unique_items(pref_rows(16))
    seqs = [encode_scored(tok, p, c, cfg.max_length) for p, c in items]
    assert all(s[-1] == tok.eos_token_id for s in seqs)  # the score reads a real end token
    ids, attn, _ = data_lib.pad_right(seqs, tok.pad_token_id)
    assert (~attn).any()  # the batch really is padded
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=attn.long()).logits.squeeze(-1)
    norm = json.loads((out / "rlhfkit.json").read_text())["normalize"]
    ours = load_reward(str(out))([p for p, _ in items], [c for _, c in items])["score"]
    torch.testing.assert_close(ours, norm["gain"] * plain + norm["bias"], rtol=1e-4, atol=1e-4)


def test_resume_gives_the_same_losses(toy_dir, tmp_path):
    write_jsonl(tmp_path / "pref.jsonl", pref_rows(48))
    cfg = _cfg(toy_dir, tmp_path, "run", max_steps=6, save_every=3, normalize=False)
    out = rm.train(cfg)
    full = [r["train/loss"] for r in read_metrics(out)]
    assert (out / "checkpoints").exists()
    rm.train(rm.Config(**{**cfg.__dict__, "resume": True}))  # resumes at step 3, reruns 4..6
    resumed = [r["train/loss"] for r in read_metrics(out)]
    assert len(resumed) == 6
    assert resumed[3:] == pytest.approx(full[3:], rel=1e-6, abs=1e-7)


def test_ensemble_mean_and_std(toy_dir, tmp_path):
    write_jsonl(tmp_path / "pref.jsonl", pref_rows(32))
    out = rm.train(_cfg(toy_dir, tmp_path, "ens", max_steps=4, ensemble_size=2))
    meta = json.loads((out / "rlhfkit.json").read_text())
    assert meta["ensemble"] == ["member-0", "member-1"]
    rows = pref_rows(8, seed=3)
    prompts, resp = [r["prompt"] for r in rows], [r["chosen"][0]["content"] for r in rows]
    ens = load_reward(str(out))(prompts, resp)
    members = torch.stack([load_reward(str(out / m))(prompts, resp)["score"] for m in meta["ensemble"]])
    torch.testing.assert_close(ens["score"], members.mean(0))
    torch.testing.assert_close(ens["std"], members.std(0, unbiased=False))
    assert (ens["std"] > 0).all()  # different seeds: different head init and data order


def test_truncation_cuts_prompt_from_left_and_keeps_every_response(toy_dir, tmp_path):
    rows = pref_rows(16, long_prompt=True)
    tok = models.load_tokenizer(str(toy_dir / "model"))
    cfg = rm.Config(model="m", data="d", max_length=24)
    ps = rm.build_pairs(tok, rows, cfg)
    assert ps.counts["pairs"] == 16 and ps.counts["prompt_truncated"] == 32
    assert ps.counts.get("completion_truncated", 0) == 0
    for row, ci, ri in zip(rows, ps.chosen, ps.rejected):
        for resp, si in ((row["chosen"], ci), (row["rejected"], ri)):
            full_resp = data_lib.encode_completion(tok, row["prompt"], resp)
            seq = ps.seqs[si]
            assert len(seq) <= 24 and seq[-len(full_resp):] == full_resp  # whole response, EOS last
            full_prompt = data_lib.encode_prompt(tok, row["prompt"])
            kept = seq[: len(seq) - len(full_resp)]
            assert full_prompt[-len(kept):] == kept  # the prompt's END survives


def test_ties_groups_and_margins(toy_dir):
    tok = models.load_tokenizer(str(toy_dir / "model"))
    rows = pref_rows(6)
    for i, r in enumerate(rows):
        r.update(group=i // 3, tie=i == 1, margin=0.5)
    drop = rm.build_pairs(tok, rows, rm.Config(model="m", data="d", group_by_prompt=True))
    assert drop.counts["ties_dropped"] == 1 and drop.counts["pairs"] == 5
    assert drop.units == [[0, 1], [2, 3, 4]] and drop.margin == [0.0] * 5
    soft = rm.build_pairs(tok, rows, rm.Config(model="m", data="d", ties="soft", margin=True))
    assert soft.target == [1.0, 0.5, 1.0, 1.0, 1.0, 1.0] and soft.margin == [0.5, 0.0, 0.5, 0.5, 0.5, 0.5]
    assert len(soft.units) == 6  # one pair per unit without group_by_prompt
    # the refusal "No." is shared by all rows of one prompt? no: prompts differ, so 12 unique sequences
    assert soft.counts["sequences"] == 12


def test_group_by_prompt_trains(toy_dir, tmp_path):
    """Rankings: 3 responses per prompt -> 3 pairs per group; one unit per prompt; shared responses forwarded once."""
    rows = []
    for r in pref_rows(24):
        good, bad = r["chosen"], r["rejected"]
        mid = [{"role": "assistant", "content": "The answer is unknown."}]
        for i, (c, rj) in enumerate(((good, mid), (good, bad), (mid, bad))):
            rows.append({"prompt": r["prompt"], "chosen": c, "rejected": rj, "group": len(rows) // 3})
    write_jsonl(tmp_path / "pref.jsonl", rows)
    out = rm.train(_cfg(toy_dir, tmp_path, "g", max_steps=12, micro_batch_size=4, group_by_prompt=True))
    meta = json.loads((out / "rlhfkit.json").read_text())
    assert meta["data"]["units"] == 24 and meta["data"]["pairs"] == 72
    log = read_metrics(out)
    assert log[-1]["train/loss"] < log[0]["train/loss"]


def test_encoder_backbone(toy_dir, tmp_path):
    """A BERT-style encoder (pooled `classifier` head) trains through the same path."""
    from transformers import BertConfig, BertModel

    tok = models.load_tokenizer(str(toy_dir / "tok"))
    enc = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id))
    models.save(enc, tok, tmp_path / "bert")
    write_jsonl(tmp_path / "pref.jsonl", pref_rows(32))
    cfg = rm.Config(model=str(tmp_path / "bert"), data=str(tmp_path / "pref.jsonl"), output_dir=str(tmp_path / "o"),
                    max_steps=8, micro_batch_size=8, learning_rate=3e-3, progress=False)
    out = rm.train(cfg)
    log = read_metrics(out)
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in log)
    assert log[-1]["rewards/accuracy"] == 1.0 and log[-1]["train/loss"] < log[0]["train/loss"]  # it learns
    s = load_reward(str(out))([r["prompt"] for r in pref_rows(4)], ["The answer is 3."] * 4)["score"]
    assert s.shape == (4,) and torch.isfinite(s).all()
    shutil.rmtree(tmp_path / "bert")


def test_shared_prompt_layout_equals_padded_rows(toy_dir, tmp_path):
    """share_prompt forwards each prompt once for all its responses (layout.build_layout); the rewards must be those
    of separate right-padded rows (same positions, same visible tokens), and training must follow the same losses."""
    rows = []
    for r in pref_rows(12):  # 3 responses per prompt -> 3 pairs, responses of different lengths
        mid = [{"role": "assistant", "content": "The answer is probably unknown to me."}]
        rows += [{"prompt": r["prompt"], "chosen": c, "rejected": j}
                 for c, j in ((r["chosen"], mid), (r["chosen"], r["rejected"]), (mid, r["rejected"]))]
    write_jsonl(tmp_path / "pref.jsonl", rows)
    model, tok = rm.load_backbone(_cfg(toy_dir, tmp_path, "x"), 0)
    model.eval()
    ps = rm.build_pairs(tok, rows, _cfg(toy_dir, tmp_path, "x"))
    uniq = list(range(len(ps.seqs)))
    scorer = rm.PairScorer(model)
    padded, n_pad = rm.micro_batch_inputs(ps, uniq, tok.pad_token_id, share_prompt=False)
    shared, n_shared = rm.micro_batch_inputs(ps, uniq, tok.pad_token_id, share_prompt=True)
    packed, n_packed = rm.micro_batch_inputs(ps, uniq, tok.pad_token_id, share_prompt=True, packed=True)
    with torch.no_grad():
        torch.testing.assert_close(scorer(**shared), scorer(**padded), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scorer(**packed), scorer(**padded), rtol=1e-5, atol=1e-5)  # the GPU layout
    assert n_packed == n_shared
    prompts = {tuple(s[:n]) for s, n in zip(ps.seqs, ps.prefix_len)}
    assert len(prompts) == 12 and len(ps.seqs) == 36
    assert n_shared == n_pad - 2 * sum(map(len, prompts))  # 3 responses per prompt: its prompt forwarded once, not 3x
    a = rm.train(_cfg(toy_dir, tmp_path, "shared", max_steps=4, normalize=False))
    b = rm.train(_cfg(toy_dir, tmp_path, "padded", max_steps=4, normalize=False, share_prompt=False))
    la, lb = ([r["train/loss"] for r in read_metrics(o)] for o in (a, b))
    assert la == pytest.approx(lb, rel=1e-4, abs=1e-5)
