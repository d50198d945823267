"""Tools: the exact calculator and its refusals, the lookup table, the registry's schemas, a worker that contains
tools that raise, hang, flood or crash, the Hermes tool-call parser, and TRL tool-use rows with path:line errors."""

import json
import re
from fractions import Fraction

import pytest

from tool_fixtures import TOOL_TEMPLATE, tool_tokenizer
from rlhfkit import data as D
from rlhfkit.data import tools as TD
from rlhfkit.rollout import builtin_tools as B
from rlhfkit.rollout import tools as T


# ----------------------------------------------------------------------------------------------- calculator
@pytest.mark.parametrize("expression, expected", [
    ("123 * 456", "56088"),
    ("0.1 + 0.2", "0.3"),  # exact decimals: 1/10 + 2/10 = 3/10, not 0.30000000000000004
    ("7 / 2", "3.5"),
    ("-2 ** -3", "-0.125"),  # -(2^-3) = -1/8
    ("1 / 3", "0.33333333333333333333"),  # 20 significant digits of a non-terminating decimal
    ("2 / 3", "0.66666666666666666667"),  # rounded, not cut
    ("2 ** 100", "1267650600228229401496703205376"),  # exact big integers
    ("(17 * 23) // 4 % 7", "6"),  # 391 // 4 = 97, 97 % 7 = 6
    ("1.5e3 - 1", "1499"),
])
def test_calculator_is_exact(expression, expected):
    assert B.calculator(expression) == expected


@pytest.mark.parametrize("expression, reason", [
    ("__import__('os').system('echo pwned')", "not arithmetic: function calls"),
    ("x + 1", "not arithmetic: names"),
    ("(1).real", "not arithmetic: attributes"),
    ("'a' * 3", "constants other than numbers"),
    ("True + 1", "constants other than numbers"),
    ("[1][0]", "subscripts"),
    ("[1, 2]", "List"),
    ("lambda: 1", "Lambda"),
    ("9 ** 9 ** 9", "exponent 387420489 too large"),  # refused before computing 9^387420489
    ("10 ** 5000", "result too large"),  # 4 bits x 5000: refused before it is computed
    ("2 ** 0.5", "exponent must be an integer"),
    ("1 / 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("1 +", "not an arithmetic expression"),
    ("1" * 600, "expression too long"),
    ("(" * 240 + "1" + ")" * 240, "not an arithmetic expression"),  # past the parser's nesting limit
])
def test_calculator_refuses(expression, reason):
    with pytest.raises(B.CalculatorError, match=re.escape(reason)):
        B.calculator(expression)


def test_format_number_by_hand():
    # 3/8 = 0.375 (denominator 2^3: three decimals); -7/20 = -0.35 (2^2 * 5: two); 1/7 has no finite expansion
    assert B.format_number(Fraction(3, 8)) == "0.375"
    assert B.format_number(Fraction(-7, 20)) == "-0.35"
    assert B.format_number(Fraction(1, 7)) == "0.14285714285714285714"
    assert B.format_number(Fraction(-1, 40)) == "-0.025"


def test_lookup_table(tmp_path):
    table = B.LookupTable({"Capital of Zorbia": "Glim"})
    assert table.lookup("  capital  of ZORBIA ") == "Glim"
    assert table.lookup("capital of Nowhere") == "no entry for 'capital of Nowhere'"
    path = tmp_path / "facts.jsonl"
    path.write_text('{"key": "zorb", "value": "blue"}\n{"key": "glim"}\n{"key": 3, "value": "x"}\nnot json\n')
    with pytest.raises(D.DataError) as e:
        T.load_table(path)
    msg = str(e.value)
    assert f"{path}:2: value: missing" in msg
    assert f"{path}:3: key: expected a string, got int" in msg
    assert f"{path}:4: bad JSON" in msg
    good = tmp_path / "facts.json"
    good.write_text(json.dumps({"zorb": "blue", "n": 3}))
    assert T.load_table(good) == {"zorb": "blue", "n": "3"}


# ----------------------------------------------------------------------------------------------- registry
def test_registry_schema_from_hints_and_docstring():
    registry = T.load_tools(["calculator"])
    fn = registry.schemas()[0]["function"]
    assert fn["name"] == "calculator"
    assert fn["parameters"]["properties"]["expression"]["type"] == "string"
    assert fn["parameters"]["required"] == ["expression"]
    assert registry.check_call("calculator", {"expression": "1+1"}) is None
    assert "unknown tool 'calc'" in registry.check_call("calc", {})
    assert "missing required argument(s) ['expression']" in registry.check_call("calculator", {})
    assert "has no argument(s) ['x']" in registry.check_call("calculator", {"expression": "1", "x": 2})
    assert "must be string, got int" in registry.check_call("calculator", {"expression": 3})


def test_registry_rejects_unusable_tools(tmp_path):
    def undocumented(x: int) -> int:
        return x

    with pytest.raises(T.ToolError, match="cannot derive its JSON schema"):
        T.ToolRegistry([undocumented])
    with pytest.raises(T.ToolError, match="define it at module level"):
        T.ToolRegistry().register(lambda x: x, schema=T.function_schema(B.calculator, "anon"))
    with pytest.raises(T.ToolError, match="registered twice"):
        T.load_tools(["calculator", "calculator"])
    with pytest.raises(T.ToolError, match="cannot import"):
        T.load_tools(["no_such_module_here:fn"])
    with pytest.raises(T.ToolError, match="expected calculator, lookup=TABLE or module:function"):
        T.load_tools(["calc"])
    (tmp_path / "t.json").write_text('{"a": "b"}')
    assert set(T.load_tools(["calculator", f"lookup={tmp_path / 't.json'}", "tool_fixtures:shout"]).tools) == {
        "calculator", "lookup", "shout"}


# ----------------------------------------------------------------------------------------------- containment
def test_runner_contains_raise_hang_flood_and_crash():
    registry = T.load_tools(["calculator", "tool_fixtures:explode", "tool_fixtures:hang", "tool_fixtures:flood",
                             "tool_fixtures:shout", "tool_fixtures:die"])
    with T.ToolRunner(registry, timeout_s=2.0, max_output_bytes=1000) as runner:
        ok = runner.call("calculator", {"expression": "6 * 7"})
        assert (ok.ok, ok.content) == (True, "42")

        raised = runner.call("explode", {"message": "boom"})
        assert not raised.ok and raised.error == "raised"
        assert raised.content == "error: RuntimeError: boom"  # the message, no traceback

        hung = runner.call("hang", {"seconds": 600})
        assert not hung.ok and hung.error == "timeout" and "timed out after 2s" in hung.content
        assert hung.seconds < 10  # contained: the trainer waited the timeout, not the 600 s

        flooded = runner.call("flood", {"megabytes": 1})
        assert flooded.ok and flooded.truncated and flooded.output_bytes == 1024 * 1024
        assert flooded.content.startswith("x" * 1000) and "[output truncated: 1048576 bytes" in flooded.content
        assert len(flooded.content.encode()) < 1100  # cut in the worker: 1 MB never crossed the pipe

        loud = runner.call("shout", {"text": "hi"})  # a print inside a tool does not corrupt the reply pipe
        assert (loud.ok, loud.content) == (True, "HI")

        crashed = runner.call("die", {"code": 3})
        assert not crashed.ok and crashed.error == "crashed"

        again = runner.call("calculator", {"expression": "2 ** 10"})  # a fresh worker after the hang and the crash
        assert (again.ok, again.content) == (True, "1024")
        assert runner.stats == {"calls": 7, "errors": 3, "timeouts": 1, "crashes": 1, "truncated": 1}


def test_cap_bytes_cuts_at_a_character_boundary():
    from rlhfkit.rollout.toolworker import cap_bytes

    # "é" is 2 bytes in UTF-8: 3 of them are 6 bytes; a 5-byte cap keeps 2 characters, never half of one
    assert cap_bytes("ééé", 5) == ("éé", 6)
    assert cap_bytes("abc", 5) == ("abc", 3)


# ----------------------------------------------------------------------------------------------- parsing
def test_parse_hermes():
    text = ('Let me compute. <tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>'
            '<tool_call>{bad}</tool_call> <tool_call>{"name": "calculator", "arguments": "1+1"}</tool_call>'
            '<tool_call>["calculator"]</tool_call> done <tool_call>{"name": "x"')
    parsed = T.parse_hermes(text)
    assert parsed.content == "Let me compute.   done"  # the text between the blocks, as written
    assert [c.name for c in parsed.calls] == ["calculator", None, "calculator", None, None]
    assert parsed.calls[0].arguments == {"expression": "1+1"} and parsed.calls[0].error is None
    assert "not valid JSON" in parsed.calls[1].error
    assert "arguments of calculator must be a JSON object" in parsed.calls[2].error
    assert parsed.calls[3].error.startswith("tool call must be")
    assert parsed.calls[4].error == "tool call not closed with </tool_call>"
    assert T.parse_hermes("The answer is 4.") == T.ParsedTurn("The answer is 4.", [])


# ----------------------------------------------------------------------------------------------- data
CALC = T.function_schema(B.calculator)


def tool_row(**changes):
    row = {"tools": [CALC], "messages": [
        {"role": "user", "content": "What is 123 times 456?"},
        {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "123 * 456"}}}]},
        {"role": "tool", "name": "calculator", "content": "56088"},
        {"role": "assistant", "content": "The answer is 56088."},
    ]}
    row.update(changes)
    return row


def test_tool_rows_validate_with_path_line_field(tmp_path):
    good = tool_row()
    strings = tool_row(tools=json.dumps([CALC]))  # Hub datasets store schemas and arguments as JSON strings
    strings["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"expression": "1 + 1"}'
    unknown, missing, orphan, bad_schema, bad_args_json = (tool_row() for _ in range(5))
    unknown["messages"][1]["tool_calls"][0]["function"]["name"] = "search"
    missing["messages"][1]["tool_calls"][0]["function"]["arguments"] = {}
    orphan["messages"] = [orphan["messages"][0], orphan["messages"][2]]
    bad_schema["tools"] = [{"type": "function", "function": {"name": "calc ulator"}}]
    bad_args_json["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{expression: 1}"
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in
                            [good, strings, unknown, missing, orphan, bad_schema, bad_args_json]))
    with pytest.raises(D.DataError) as e:
        TD.load_tool_rows(path)
    msg = str(e.value)
    assert "5 invalid row(s)" in msg
    assert f"{path}:3: messages[1].tool_calls[0].function.name: 'search' is not in this row's tools" in msg
    assert (f"{path}:4: messages[1].tool_calls[0].function.arguments: calculator is missing required argument(s) "
            "['expression']") in msg
    assert f"{path}:5: messages[1]: tool result with no tool call before it to answer" in msg
    assert f"{path}:6: tools[0]: function.name must be letters, digits, _ or -, got 'calc ulator'" in msg
    assert f"{path}:7: messages[1].tool_calls[0].function.arguments: arguments is a string but not JSON" in msg
    stats = {}
    rows = TD.load_tool_rows(path, skip_invalid=True, stats=stats)
    assert stats == {"type": "language_modeling", "rows": 2, "skipped": 5}
    assert rows[1]["tools"] == [CALC]  # decoded
    assert rows[1]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"expression": "1 + 1"}
    assert rows[0]["messages"][1]["content"] == ""  # a calls-only turn gets the empty content templates expect


def test_tool_results_may_answer_the_prompts_calls():
    row = tool_row()
    row = {"tools": row["tools"], "prompt": row["messages"][:2], "completion": row["messages"][2:]}
    assert TD.validate_tool_row(TD.normalize_row(row)[0]) == []
    row["prompt"] = row["prompt"][:1]
    assert TD.validate_tool_row(TD.normalize_row(row)[0]) == [
        ("completion[0]", "tool result with no tool call before it to answer")]


def test_render_with_tools():
    tok = tool_tokenizer()
    text = TD.render_chat(tok, tool_row()["messages"], [CALC])
    assert '"name": "calculator"' in text.split("<|user|>")[0]  # the schema in the system turn
    assert '<tool_call>{"name": "calculator", "arguments": {"expression": "123 * 456"}}</tool_call><|eos|>' in text
    assert "<|user|><tool_response>56088</tool_response><|end|>" in text
    ids = TD.encode_tool_prompt(tok, "What is 2 + 2?", [CALC])
    assert tok.decode(ids).endswith("<|user|>What is 2 + 2?<|end|><|assistant|>")
    TD.check_template_renders_tools(tok, [CALC])
    tok.chat_template = TOOL_TEMPLATE.replace("{%- if tools %}", "{%- if false %}")
    with pytest.raises(D.DataError, match="does not render tools"):
        TD.check_template_renders_tools(tok, [CALC])
