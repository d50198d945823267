"""The world's tool-use tasks (world/tool_tasks.py), the world chat template's tool rendering, SFT on tool
demonstrations (only the assistant's tokens train, its tool calls included) and a saved tool-use model chatting with
tools in plain transformers."""

import json
import random

import pytest
import torch

from rlhfkit import data as data_lib
from rlhfkit.data import tools as tool_data
from rlhfkit.data.tokenizer import CHAT_TEMPLATE, train_tokenizer
from rlhfkit.rollout import builtin_tools
from rlhfkit.rollout.tools import function_schema, parse_hermes
from rlhfkit.world import tool_tasks as TT
from rlhfkit.world.tool_tasks import ToolWorld

# The world template before tools (data/tokenizer.py at main): conversations without tools must render the same
OLD_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '<|end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@pytest.fixture(scope="module")
def world():
    return ToolWorld(seed=0)


@pytest.fixture(scope="module")
def tok(world):
    texts = [json.dumps(r) for r in world.demos(40)] + ["What is 3 plus 4? 3 plus 4 is 7."] * 20
    return train_tokenizer(texts, vocab_size=400, min_frequency=2)


# ----------------------------------------------------------------------------------------------- tasks
def test_tasks_are_seeded_split_and_exact(world):
    assert world.tasks(30) == ToolWorld(seed=0).tasks(30)
    assert world.tasks(10) == world.tasks(30)[:10]  # a longer list extends a shorter one
    assert world.tasks(30) != ToolWorld(seed=1).tasks(30)
    assert world.table != ToolWorld(seed=1).table
    train, rl, held = world.tasks(400), world.tasks(200, "rl"), world.tasks(200, "heldout")
    key = lambda r: json.dumps(world.parse(r["prompt"][0]["content"]).arguments)  # noqa: E731
    keys = {name: {key(r) for r in rows} for name, rows in (("train", train), ("rl", rl), ("heldout", held))}
    # no place and no operand pair in two splits
    assert not keys["train"] & keys["heldout"] and not keys["rl"] & keys["heldout"] and not keys["train"] & keys["rl"]
    demo_keys = {json.dumps(m["messages"][1]["tool_calls"][0]["function"]["arguments"]) for m in world.demos(200)}
    assert not demo_keys & (keys["heldout"] | keys["rl"])  # the demonstrations hold no RL or held-out task
    places = {split: [p for p in world.table if TT.split_of_key(p) == split] for split in TT.SPLITS}
    shares = {"train": 100 - TT.HELDOUT_PERCENT - TT.RL_PERCENT, "rl": TT.RL_PERCENT, "heldout": TT.HELDOUT_PERCENT}
    for split, share in shares.items():  # the hash splits 4,000 places near the shares (binomial s.d. 0.7-0.8 points)
        assert abs(100 * len(places[split]) / len(world.table) - share) < 3, (split, len(places[split]))
    assert len(world.table) == 4000 and {len(p) for p in world.table} >= {4, 9}  # two and three syllables
    with pytest.raises(ValueError, match="split must be one of train, rl, heldout"):
        world.tasks(1, "test")
    for r in train[:50] + held[:50]:
        t = world.parse(r["prompt"][0]["content"])
        assert r["answer"] == t.answer and r["kind"] == t.kind
        if t.kind == "multiply":  # the calculator itself agrees with the world's answer
            assert builtin_tools.calculator(t.arguments["expression"]) == t.answer
            assert 100 <= int(t.answer) <= 9801  # two 2-digit factors
        else:
            assert builtin_tools.LookupTable(world.table).lookup(t.arguments["key"]) == t.answer
    assert {r["kind"] for r in train} == set(TT.TOOL_KINDS)
    with pytest.raises(ValueError, match="not a tool task"):
        world.parse("What is the code of Nowhere?")


def test_tasks_repeat_no_place_or_pair_until_the_split_is_spent():
    """Within a split no place or operand pair comes twice until every one has come: a 40-place table holds
    16 +- 3 rl places (RL_PERCENT 40), so 200 rl tasks (100 look-ups) go through them several times over, each
    pass a permutation; the 100 multiplications in that list are all different pairs (of ~3,240 rl pairs)."""
    small = ToolWorld(seed=0, n_places=40)
    rl_places = sorted(p for p in small.table if TT.split_of_key(p) == "rl")
    rows = small.tasks(200, "rl")
    looked = [small.parse(r["prompt"][0]["content"]).arguments["key"] for r in rows if r["kind"] == "lookup"]
    k = len(rl_places)
    assert 8 <= k <= 24 and len(looked) == 100
    for start in range(0, len(looked) - k + 1, k):  # each full pass holds every rl place once
        assert sorted(looked[start:start + k]) == rl_places, start
    pairs = [small.parse(r["prompt"][0]["content"]).arguments["expression"] for r in rows if r["kind"] == "multiply"]
    assert len(set(pairs)) == len(pairs) == 100


def test_demos_skip_the_tool_in_the_given_share_with_a_guess(world):
    """`demos(n, skip)`: the same tasks as without skips (the tool-free rows replace the call, the result and the
    answer by one guessed answer), about `skip` of them, drawn from the seed. Guesses by hand: 47 x 82 -> 50 x 80 =
    4000; 150 rounds half up to 200; 95 x 14 -> 100 x 10 = 1000."""
    assert (TT._round1(47), TT._round1(82), TT._round1(150), TT._round1(95), TT._round1(14)) == (50, 80, 200, 100, 10)
    task = TT.ToolTask("multiply", "3854", {"expression": "47*82"})
    assert world.guess(task, random.Random(0)) == "4000"
    code = world.guess(TT.ToolTask("lookup", "1234", {"key": "Velmo"}), random.Random(0))
    assert code.isdigit() and len(code) == 4
    plain, skipped = world.demos(400), world.demos(400, skip=0.3)
    assert plain == world.demos(400, skip=0.0) and skipped == ToolWorld(seed=0).demos(400, skip=0.3)
    tool_free = [d for d in skipped if len(d["messages"]) == 2]
    assert 0.3 * 400 - 4 * 9.2 < len(tool_free) < 0.3 * 400 + 4 * 9.2  # binomial s.d. sqrt(400 x 0.3 x 0.7) = 9.2
    for p, s in zip(plain, skipped, strict=True):
        assert s["messages"][0] == p["messages"][0] and s["kind"] == p["kind"]
        if len(s["messages"]) == 2:  # user, then the guess: no tool call, no tool turn
            (answer,) = s["messages"][1:]
            assert answer["role"] == "assistant" and "tool_calls" not in answer
            assert TT.answer_value(answer["content"]) is not None
            if s["kind"] == "multiply":
                a, b = TT._MULTIPLY_RE.search(s["messages"][0]["content"]).groups()
                assert TT.answer_value(answer["content"]) == str(TT._round1(int(a)) * TT._round1(int(b)))
        else:
            assert s == p
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="skip must be in"):
            world.demos(2, skip=bad)


def test_drills_are_exact_copies_from_the_train_split(world):
    """Each drill's answer is its prompt's operands, name or number copied exactly; operand pairs and places come
    from the train split only, so no drill holds a held-out task's pair or place."""
    drills = world.drills(300)
    assert drills == ToolWorld(seed=0).drills(300) and drills != ToolWorld(seed=1).drills(300)
    assert [d["kind"] for d in drills[:3]] == [f"drill_{k}" for k in TT.DRILL_KINDS]
    for d in drills:
        (user, assistant) = d["messages"]
        q, a = user["content"], assistant["content"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        if d["kind"] == "drill_operands":  # "Copy 347 times 829." -> "347*829"
            x, y = TT._MULTIPLY_RE.search(q).groups()
            assert a == f"{x}*{y}" and len(x) == len(y) == world.digits and TT.split_of_key(a) == "train"
        elif d["kind"] == "drill_name":  # "Copy Velmo." -> "Velmo"
            assert q == f"Copy {a}." and a in world.table and TT.split_of_key(a) == "train"
        else:  # "94577" -> "The answer is 94577.", the number bare as a tool's result is
            assert q.isdigit() and a == TT.ANSWER.format(v=q) and TT.answer_value(a) == q


def test_schemas_are_the_builtin_tools_own():
    """The world writes its schemas out (it imports nothing outside itself); they equal what get_json_schema
    derives from the tools the demo registers."""
    assert TT.CALCULATOR_SCHEMA == function_schema(builtin_tools.calculator)
    assert TT.LOOKUP_SCHEMA == function_schema(builtin_tools.LookupTable({}).lookup)


def test_success_and_reward_by_hand(world):
    q = "What is 347 times 829?"  # 347 * 829 = 287663
    assert world.parse(q).answer == "287663"
    assert world.success(q, "The answer is 287663.")
    assert world.success(q, "347 times 829 is 287663.")  # the last number is the answer
    assert not world.success(q, "The answer is 287663 or 287664.")
    assert not world.success(q, "The answer is 2876630.")
    assert not world.success(q, "I don't know.")
    assert not world.success(q, "")
    place, code = next(iter(world.table.items()))
    lq = f"What is the code of {place}?"
    assert world.success(lq, f"The answer is {code}.") and not world.success(lq, "The answer is 1.")
    # partial credit: 0.5 x the share of digits in the right place, for a number of the right length
    assert TT.digit_credit("170046", "The answer is 102996.") == pytest.approx(2 / 6)  # 1....6 right
    assert TT.digit_credit("170046", "170046") == 1.0
    assert TT.digit_credit("170046", "The answer is 17004.") == 0.0  # another length
    assert TT.digit_credit("170046", "I don't know.") == 0.0
    assert world.reward(q, "The answer is 287000.", calls=1) == pytest.approx(0.5 * 3 / 6)  # 287 right of 287663
    assert world.reward(q, "The answer is 287000.", calls=1, malformed=1) == pytest.approx(0.25 - 0.1)
    assert world.reward(q, "The answer is 287660.", calls=1) < world.reward(q, "The answer is 287663.", calls=1)
    # 1 for correct; -0.5 without a well-formed call; with one, -0.1 per malformed call (at most -0.3) and extra call
    assert world.reward(q, "The answer is 287663.", calls=1) == 1.0
    assert world.reward(q, "The answer is 287663.", calls=3) == pytest.approx(0.8)
    assert world.reward(q, "The answer is 287663.", calls=1, malformed=1) == pytest.approx(0.9)
    assert world.reward(q, "The answer is 287663.", calls=0) == 0.5  # right without the tool: a guess
    assert world.reward(q, "no", calls=1) == 0.0  # a well-formed call and a wrong answer
    assert world.reward(q, "no", calls=0) == -0.5  # no call
    assert world.reward(q, "no", calls=0, malformed=1) == -0.5  # only malformed calls: the same as none
    assert world.reward(q, "no", calls=1, malformed=5) == pytest.approx(-0.3)  # the malformed cost caps at 0.3
    # the order RL needs: a well-formed call > a fixed malformed one > no call = malformed only
    assert (world.reward(q, "no", calls=1) > world.reward(q, "no", calls=1, malformed=1)
            > world.reward(q, "no", calls=0) == world.reward(q, "no", calls=0, malformed=2))
    assert world.rewards([q, q], ["287663", "1"], [1, 1], [0, 0]) == [1.0, 0.0]
    assert world.rewards([q, q], ["287663", "1"]) == [1.0, 0.0]  # without episodes only the answer counts


# ----------------------------------------------------------------------------------------------- the template
def test_template_without_tools_is_unchanged(tok):
    """Every conversation the world had before tools renders byte for byte as under the old template, so the
    demo's existing stages (and their numbers) do not change."""
    convs = [[{"role": "user", "content": "What is 3 plus 4?"}],
             [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "3 plus 4 is 7."}],
             [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"},
              {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}]]
    new = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=g) for c in convs for g in (0, 1)]
    tok.chat_template = OLD_TEMPLATE
    try:
        old = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=g) for c in convs for g in (0, 1)]
    finally:
        tok.chat_template = CHAT_TEMPLATE
    assert new == old


def test_template_renders_tools_calls_and_results(tok, world):
    demo = world.demos(1)[0]
    text = tool_data.render_chat(tok, demo["messages"], demo["tools"])
    a, b = demo["messages"][1]["tool_calls"][0]["function"]["arguments"]["expression"].split("*")
    assert text == (f"<|system|>tools: calculator(expression) lookup(key)<|end|>"
                    f"<|user|>{demo['messages'][0]['content']}<|end|>"
                    f'<|assistant|><tool_call>{{"name":"calculator","arguments":{{"expression":"{a}*{b}"}}}}'
                    f"</tool_call><|eos|><|tool|>{int(a) * int(b)}<|end|>"
                    f"<|assistant|>The answer is {int(a) * int(b)}.<|eos|>")
    tool_data.check_template_renders_tools(tok, demo["tools"])  # does not raise
    # round trip: the call as rendered parses back (Hermes) to the call in the data
    turn = text.split("<|assistant|>")[1].split("<|eos|>")[0]
    parsed = parse_hermes(turn)
    assert parsed.content == "" and [(c.name, c.arguments, c.error) for c in parsed.calls] == [
        ("calculator", {"expression": f"{a}*{b}"}, None)]
    # multiturn.tool_context's requirement: a conversation renders as a prefix of its continuation
    head = tool_data.render_chat(tok, demo["messages"][:2], demo["tools"])
    assert tool_data.render_chat(tok, demo["messages"][:3], demo["tools"], add_generation_prompt=True).startswith(head)


# ----------------------------------------------------------------------------------------------- SFT on demos
def test_sft_masks_exactly_the_assistant_turns(tok, world, tmp_path):
    """Loaded through data.load_rows (tool rows normalised: a call-only turn may omit content, arguments may be a
    JSON string) and tokenised by sft: the loss covers the assistant's call turn and its answer, each with its
    EOS; the tool schemas, the user turn and the tool result are context."""
    demo = world.demos(1)[0]
    raw = json.loads(json.dumps(demo))
    del raw["messages"][1]["content"]
    fn = raw["messages"][1]["tool_calls"][0]["function"]
    fn["arguments"] = json.dumps(fn["arguments"])
    path = data_lib.write_jsonl([raw], tmp_path / "demos.jsonl")
    (row,) = data_lib.load_rows(path)
    assert row["messages"][1]["content"] == "" and isinstance(row["messages"][1]["tool_calls"][0]["function"]
                                                                 ["arguments"], dict)
    ex = data_lib.sft_example(tok, row, max_length=512)
    assert tok.decode(ex.input_ids) == tool_data.render_chat(tok, demo["messages"], demo["tools"])
    trained = [[]]
    for i, m in zip(ex.input_ids, ex.loss_mask):
        if m:
            trained[-1].append(i)
        elif trained[-1]:
            trained.append([])
    spans = [tok.decode(s) for s in trained if s]
    expr = demo["messages"][1]["tool_calls"][0]["function"]["arguments"]["expression"]
    answer = demo["messages"][3]["content"]
    assert spans == [f'<tool_call>{{"name":"calculator","arguments":{{"expression":"{expr}"}}}}</tool_call><|eos|>',
                     f"{answer}<|eos|>"]
    # a bad call is reported with its line and field
    bad = json.loads(json.dumps(demo))
    bad["messages"][1]["tool_calls"][0]["function"]["arguments"] = {"expr": "1+1"}
    data_lib.write_jsonl([bad], tmp_path / "bad.jsonl")
    with pytest.raises(data_lib.DataError, match=r"bad.jsonl:1: messages\[1\].tool_calls\[0\].function.arguments"):
        data_lib.load_rows(tmp_path / "bad.jsonl")


def test_saved_tool_model_chats_with_tools_in_plain_transformers(tok, world, tmp_path):
    """A tiny model fine-tuned for a few steps on tool demonstrations by `rlhfkit sft`, then loaded with nothing but
    transformers: the chat template renders the tools, and generation runs from it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit import models
    from rlhfkit.algorithms import sft

    base = tmp_path / "base"
    models.save(models.build_llama(tok, hidden_size=32, num_layers=1, num_heads=2), tok, base)
    data = data_lib.write_jsonl(world.demos(16), tmp_path / "demos.jsonl")
    out = sft.train(sft.Config(model=str(base), data=str(data), output_dir=str(tmp_path / "sft"), max_steps=3,
                               micro_batch_size=8, learning_rate=1e-3, max_length=256, progress=False))
    hf_tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    task = world.tasks(1, "heldout")[0]
    text = hf_tok.apply_chat_template(task["prompt"], tools=task["tools"], add_generation_prompt=True,
                                      tokenize=False)
    assert text == (f"<|system|>tools: calculator(expression) lookup(key)<|end|><|user|>"
                    f"{task['prompt'][0]['content']}<|end|><|assistant|>")
    ids = hf_tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    gen = model.generate(ids, max_new_tokens=8, do_sample=True, pad_token_id=hf_tok.pad_token_id)
    assert gen.shape[1] > ids.shape[1] and torch.equal(gen[0, :ids.shape[1]], ids[0])


# ----------------------------------------------------------------------------------------------- the report
def test_report_section_shows_transcripts_as_inert_text():
    from rlhfkit.diagnostics.report_tools import section_tool_use

    evil = "<script>alert(1)</script>"
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": evil}}}
    transcript = {"messages": [{"role": "user", "content": "What is 347 times 829?"},
                               {"role": "assistant", "content": "", "tool_calls": [call]},
                               {"role": "tool", "name": "calculator", "content": f"error: {evil}"},
                               {"role": "assistant", "content": f"The answer is {evil} <b>287663</b>."}],
                  "success": False, "stop": "answer", "answer_expected": "287663"}
    pol = lambda m, lo, hi: {"success": {"mean": m, "low": lo, "high": hi, "n": 100},  # noqa: E731
                             "malformed_call_rate": 0.1, "calls_per_episode": 1.0, "transcript": transcript}
    summary = {"tool_use": {"policies": {"no_tool": pol(0.0, 0.0, 0.04), "tool_sft": pol(0.3, 0.22, 0.4),
                                         "tool_rl": pol(0.6, 0.5, 0.69)},
                            "rl": {"steps": 200, "first": {"steps": [1, 20], "malformed_call_rate": 0.4, "score": 0.1,
                                                           "calls_per_episode": 0.7},
                                   "last": {"steps": [181, 200], "malformed_call_rate": 0.05, "score": 0.6,
                                            "calls_per_episode": 1.0}},
                            "n_heldout": 100, "max_turns": 3, "temperature": 1.0, "digits": 3, "n_demos": 1600,
                            "demo_skip": 0.3}}
    summary["tool_use"]["policies"]["tool_rl"]["success_by_kind"] = {"multiply": 0.5, "lookup": 0.7}
    html = section_tool_use(summary)
    assert "multiplying two 3-digit numbers" in html
    assert "<td>0.500</td><td>0.700</td>" in html  # tool_rl's success per kind; the others have none: "-"
    assert "<script>" not in html and "<b>287663</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;287663&lt;/b&gt;" in html
    assert html.count('class="text resp"') == 3  # one transcript per policy
    assert "After RL, success is above the tool-SFT policy&#x27;s; above the no-tool policy&#x27;s" in html
    assert "from 0.400 (mean of steps 1-20) to 0.050 (steps 181-200), the calls per episode from 0.70 to 1.00" in html
    assert "Tool-SFT imitates 1600 demonstrations, 30% of which answer with a guess" in html
    summary["tool_use"]["policies"]["tool_rl"]["success"] = {"mean": 0.35, "low": 0.26, "high": 0.45}
    assert "indistinguishable from the tool-SFT" in section_tool_use(summary)
    assert section_tool_use({}) == ""
