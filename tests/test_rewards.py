"""rewards.load_reward / load_rewards: function specs get prompt TEXT, directories score like training, weighted
sums expose their components. (The http:// kind is tested against a real server in test_serve_rm.py.)"""

import pytest
import torch

from conftest import write_jsonl
from rlhfkit import data as data_lib
from rlhfkit import models
from rlhfkit.models.rewards import FunctionReward, encode_scored, load_reward, load_rewards

SEEN = []


def echo_len(prompts, responses):
    SEEN.append((prompts, responses))
    return [len(p) * 10 + len(r) for p, r in zip(prompts, responses)]


def test_function_spec_gets_last_user_text():
    f = load_reward("test_rewards:echo_len")
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "abc"},
            {"role": "assistant", "content": "x"}, {"role": "user", "content": "de"}]
    out = f([msgs, "wxyz"], ["1", [{"role": "assistant", "content": "22"}]])
    assert SEEN[-1] == (["de", "wxyz"], ["1", "22"])
    assert out["score"].dtype == torch.float32 and out["score"].tolist() == [21.0, 42.0]
    gold = load_reward("rlhfkit.world:gold_reward")(["What is 2 plus 3?"], ["2 plus 3 is 5."])["score"]
    assert gold.shape == (1,)


def test_bad_specs_and_lengths():
    with pytest.raises(ValueError, match="not a directory"):
        load_reward("no/such/dir")
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        FunctionReward(lambda p, r: [1.0])(["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        load_reward("test_rewards:echo_len")(["a", "b"], ["c"])


def test_weighted_sum_and_components():
    f = load_rewards(["test_rewards:echo_len", "rlhfkit.world:correct_reward"], weights=[0.5, 2.0])
    out = f(["What is 2 plus 3?", "What is 1 plus 1?"], ["2 plus 3 is 5.", "It is 3."])
    torch.testing.assert_close(out["score"], 0.5 * out["score/0"] + 2.0 * out["score/1"])
    assert out["score/1"].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="2 reward sources but 1 weights"):
        load_rewards(["test_rewards:echo_len", "test_rewards:echo_len"], weights=[1.0])


def test_weighted_std_assumes_independence():
    a = lambda p, r: {"score": torch.tensor([1.0]), "std": torch.tensor([3.0])}  # noqa: E731
    b = lambda p, r: {"score": torch.tensor([2.0]), "std": torch.tensor([4.0])}  # noqa: E731
    from rlhfkit.models.rewards import WeightedRewards

    out = WeightedRewards([a, b], [1.0, 1.0])(["p"], ["r"])
    assert out["score"].item() == 3.0 and out["std"].item() == pytest.approx(5.0)  # sqrt(9 + 16)


def test_directory_spec_scores_untrained_classifier(toy_dir, tmp_path):
    """A plain seq-cls directory without rlhfkit.json: raw scores, batched by length, order preserved."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = models.load_tokenizer(str(toy_dir / "tok"))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    models.save(LlamaForSequenceClassification(cfg), tok, tmp_path / "m")
    prompts = ["What is 1 plus 2?", [{"role": "user", "content": "What is 3 plus 4?"}], "Hi"]
    resp = ["The answer is 3.", "7", "A much longer response than the others, to change the batch order."]
    batched = load_reward(str(tmp_path / "m"), batch_size=2)(prompts, resp)["score"]
    single = torch.cat([load_reward(str(tmp_path / "m"), batch_size=1)([p], [r])["score"]
                        for p, r in zip(prompts, resp)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)  # padding never changes a score
    assert "std" not in load_reward(str(tmp_path / "m"))(prompts, resp)


@pytest.mark.parametrize("packed", [False, True])
def test_decoder_reward_model_shares_prompts_and_scores_like_padded_rows(toy_dir, tmp_path, monkeypatch, packed):
    """Responses to one prompt are scored in one prefix-shared block (rows under block masks, or packed: the GPU
    layout, layout.use_packed); each score equals the plain padded forward of prompt + response
    (forward_scores), for groups of 3, single prompts, and any batch size."""
    from rlhfkit.models import layout

    monkeypatch.setattr(layout, "use_packed", lambda model, device: packed)
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlhfkit.models.rewards import forward_scores

    tok = models.load_tokenizer(str(toy_dir / "tok"))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg).eval()
    models.save(model, tok, tmp_path / "m")
    prompts = ["What is 1 plus 2?"] * 3 + ["Hi"] + ["What is 3 plus 4?"] * 3
    resp = ["3", "The answer is 3.", "It is three, I think", "Hello there", "7", "seven", "The sum is 7."]
    seqs = [encode_scored(tok, p, r, 512) for p, r in zip(prompts, resp)]
    ids, attn, _ = data_lib.pad_right(seqs, tok.pad_token_id)
    with torch.no_grad():
        padded = forward_scores(model, ids, attn)
    for bs in (64, 4, 1):
        score = load_reward(str(tmp_path / "m"), batch_size=bs)(prompts, resp)["score"]
        torch.testing.assert_close(score, padded, rtol=1e-5, atol=1e-5)
        assert not score.is_inference()  # scored under inference_mode, returned as a tensor autograd may save


def test_encode_scored_keeps_cls_and_cuts_prompt_left(tmp_path):
    """An encoder's pooled output reads position 0, so a cut prompt keeps its [CLS]; the response stays whole."""
    from transformers import BertTokenizerFast

    words = ["what", "is", "one", "plus", "two", "?", "the", "answer", "three", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    tok = models.load_tokenizer(str(tmp_path / "tok"))
    assert tok.eos_token == "[SEP]"  # encoders have no EOS: SEP ends the response
    prompt, resp = "what is one plus two ? " * 3, "the answer is three ."
    full_p = data_lib.encode_prompt(tok, prompt)  # [CLS] w1 .. w18 [SEP]
    c = data_lib.encode_completion(tok, prompt, resp)  # 5 words + [SEP]
    assert full_p[0] == tok.cls_token_id and c == tok(resp, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    counter = {}
    ids = encode_scored(tok, prompt, resp, len(c) + 5, counter)
    assert ids == [tok.cls_token_id] + full_p[-4:] + c and counter == {"prompt_truncated": 1}
    assert encode_scored(tok, prompt, resp, 100) == full_p + c  # nothing cut when it fits
