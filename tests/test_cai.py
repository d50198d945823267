"""Constitutional AI pieces that need no model: the constitution file (loading, every validation error names
`path: field: reason`) and the world's rule-based critic (detects each bad style from text, revises to the ideal
answer, never reads gold)."""

import math
import random

import pytest
import yaml

from rlhfkit.cai import constitution as C
from rlhfkit.world import APPLICABLE_STYLES, critic, gold, ideal_response, make_prompts, parse_prompt, respond


def test_default_constitution_loads_and_covers_every_rule():
    c = C.load()
    assert c.name == "rlhfkit-default" and len(c.principles) >= 5
    assert {p.rule for p in c.principles} == set(critic.RULES)
    for p in c.principles:
        assert p.critique and p.revision and p.weight > 0
    c.pairwise.format(prompt="p", response_a="a", response_b="b")
    c.pointwise.format(prompt="p", response="r")


def _write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


GOOD = {"name": "t", "judge": {"pairwise": "{prompt} {response_a} {response_b} A or B?",
                               "pointwise": "{prompt} {response} Yes or No?"},
        "principles": [{"name": "p1", "critique": "find faults", "revision": "fix them"}]}


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["principles"][0].pop("critique"), "principles[0].critique: missing"),
    (lambda d: d["principles"][0].update(revision=""), "principles[0].revision: must be a non-empty string"),
    (lambda d: d["principles"].append(dict(d["principles"][0])), "principles[1].name: duplicate principle name"),
    (lambda d: d["principles"][0].update(rule="nope"), "principles[0].rule: 'nope' is not a rule-based detector"),
    (lambda d: d["principles"][0].update(weight=-1), "principles[0].weight: must be a number >= 0"),
    (lambda d: d["principles"][0].update(critiq="x"), "principles[0].critiq: unknown key"),
    (lambda d: d["judge"].update(pairwise="{prompt} {response_a}"), "judge.pairwise: must contain {response_b}"),
    (lambda d: d["judge"].update(pointwise="{prompt} {response} {x}"), "judge.pointwise: unknown placeholder"),
    (lambda d: d["judge"].update(pairwise="{prompt {response_a} {response_b}"), "judge.pairwise: bad template"),
    (lambda d: d.pop("judge"), "judge: must be a mapping"),
    (lambda d: d.update(principles=[]), "principles: must be a non-empty list"),
])
def test_validation_errors_name_path_and_field(tmp_path, mutate, message):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    assert C.load(_write(tmp_path, data)).principles[0].name == "p1"
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(C.ConstitutionError) as e:
        C.load(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)


def test_unreadable_constitution_files(tmp_path):
    with pytest.raises(C.ConstitutionError, match="constitution file not found"):
        C.load(tmp_path / "missing.yaml")
    with pytest.raises(C.ConstitutionError, match=r"c.yaml:2: invalid YAML"):
        C.load(_write(tmp_path, "name: x\n  judge: [\n"))


RULE_OF_STYLE = {"padded": {"flattery", "padding"}, "wrong": {"wrong_answer"}, "over_refusal": {"over_refusal"},
                 "harmful_comply": {"harmful_compliance"}, "fabricate": {"fabrication"},
                 "sycophantic": {"sycophancy"}, "repetitive": {"padding"}}


def test_critic_flags_each_bad_style_and_revises_to_the_ideal_answer():
    """Every bad style is flagged by its rule; the good response by none; revising against all rules gives a
    response with gold total 1 (the ideal) except where a confident marker on a correct answer is kept."""
    rng = random.Random(0)
    rules = list(critic.RULES)
    seen = set()
    for row in make_prompts(60, seed=1):
        p = row["prompt"]
        for style in APPLICABLE_STYLES[parse_prompt(p).kind]:
            r = respond(p, style, rng)
            found = {f.rule for f in critic.findings(p, r)}
            if style == "good":
                assert not found, (p, r, found)
                continue
            assert found & RULE_OF_STYLE[style], (style, p, r, found)
            if style == "padded":
                assert found <= {"flattery", "padding"}
            seen.add(style)
            revised, used = critic.revise(p, r, rules)
            assert used and not critic.findings(p, revised), (r, revised)
            assert gold(p, revised)["total"] > gold(p, r)["total"]
            assert revised.split(", ", 1)[-1].lower() == ideal_response(p).lower() or revised == ideal_response(p)
    assert seen == set(RULE_OF_STYLE)


def test_critic_score_weights_and_confidence():
    p = "What is 3 plus 4?"
    w = {r: 1.0 for r in critic.RULES}
    assert critic.score(p, "3 plus 4 is 7.", w) == 0
    assert critic.score(p, "3 plus 4 is 9.", w) == -1.0
    assert critic.score(p, "Definitely, 3 plus 4 is 9.", w) == -1.5  # a confident wrong number costs more
    assert critic.score(p, "Great question! 3 plus 4 is 7. I hope this helps!", w) == -2.0
    assert critic.score(p, "Great question! 3 plus 4 is 7.", {"padding": 1.0}) == 0  # only the rules given


# ------------------------------------------------------------------------------------------------ cai label
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from conftest import write_jsonl  # noqa: E402


def world_candidates(n=12, seed=5, k=3, conversational=True):
    """Candidates rows as `rlhfkit sample` writes them: K responses in mixed styles per world prompt."""
    rng = random.Random(seed)
    rows = []
    for row in make_prompts(n, seed=seed):
        p = row["prompt"]
        styles = list(APPLICABLE_STYLES[parse_prompt(p).kind])
        rng.shuffle(styles)
        resp = [respond(p, s, rng) for s in styles[:k]]
        rows.append({"prompt": [{"role": "user", "content": p}] if conversational else p, "responses": resp,
                     "finished": [True] * k, "kind": row["kind"], "id": row["id"]})
    return rows


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rlhfkit.cli.main", *args], capture_output=True, text=True, timeout=120)


def test_label_candidates_all_and_adjacent_pairs_in_the_app_export_format(tmp_path):
    from rlhfkit.cai import label

    cands = world_candidates(k=3)
    write_jsonl(tmp_path / "cands.jsonl", cands)
    out = label.run(label.Config(input=str(tmp_path / "cands.jsonl"), output=str(tmp_path / "all.jsonl"),
                                 ties="keep"))
    rows = [json.loads(x) for x in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert out["pairs"] == 12 * 3 == len(rows) and out["position_consistency"] == 1.0
    for r in rows:
        assert {"prompt", "chosen", "rejected", "annotator", "rationale", "item_id", "label_id", "outcome",
                "kind"} <= set(r)
        assert r["annotator"] == "judge:rule" and r["chosen"][0]["role"] == "assistant"
        c, j = r["chosen"][0]["content"], r["rejected"][0]["content"]
        src = next(x for x in cands if x["id"] == r["item_id"])
        i, k = r["pair"]
        assert {c, j} == {src["responses"][i], src["responses"][k]}
        w = {x.rule: x.weight for x in C.load().principles if x.rule}
        sc, sj = critic.score(r["prompt"][0]["content"], c, w), critic.score(r["prompt"][0]["content"], j, w)
        assert (sc > sj and r["outcome"] == "preference" and r["p_a"] != 0.5) or (sc == sj and r["outcome"] == "tie")
    label.run(label.Config(input=str(tmp_path / "cands.jsonl"), output=str(tmp_path / "adj.jsonl"),
                           pairs="adjacent", ties="keep"))
    adj = [json.loads(x) for x in (tmp_path / "adj.jsonl").read_text().splitlines()]
    assert len(adj) == 12 * 2 and {tuple(r["pair"]) for r in adj} == {(0, 1), (1, 2)}
    dropped = label.run(label.Config(input=str(tmp_path / "cands.jsonl"), output=str(tmp_path / "d.jsonl")))
    assert dropped["labels"] == dropped["pairs"] - dropped["ties"] and dropped["ties"] > 0


def test_relabelling_preference_rows_keeps_the_pair(tmp_path):
    from rlhfkit.cai import label

    p = "What is 2 plus 2?"
    write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": p, "chosen": "Great question! 2 plus 2 is 4.", "rejected": "2 plus 2 is 4.", "annotator": "bob",
         "item_id": "it-7"},
        {"prompt": p, "response_a": "2 plus 2 is 5.", "response_b": "2 plus 2 is 4."}])
    label.run(label.Config(input=str(tmp_path / "prefs.jsonl"), output=str(tmp_path / "out.jsonl")))
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["chosen"] for r in rows] == ["2 plus 2 is 4.", "2 plus 2 is 4."]  # strings stay strings
    assert rows[0]["annotator"] == "judge:rule" and rows[0]["item_id"] == "it-7" and rows[1]["item_id"] == 1
    assert rows[0]["p_a"] < 0.5 and rows[1]["p_a"] < 0.5  # in both rows the first response is the worse one


def test_rm_and_dpo_train_on_judge_labels(tmp_path, toy_dir):
    from rlhfkit.algorithms import dpo, rm
    from rlhfkit.cai import label
    from rlhfkit.engine import read_metrics

    write_jsonl(tmp_path / "cands.jsonl", world_candidates(n=8, k=2))
    label.run(label.Config(input=str(tmp_path / "cands.jsonl"), output=str(tmp_path / "ai.jsonl")))
    out = rm.train(rm.Config(model=str(toy_dir / "model"), data=str(tmp_path / "ai.jsonl"),
                             output_dir=str(tmp_path / "rm"), max_steps=3, micro_batch_size=4, progress=False,
                             norm_samples=0))
    log = read_metrics(out)
    assert len(log) == 3 and all(math.isfinite(r["train/loss"]) for r in log)
    out = dpo.train(dpo.Config(model=str(toy_dir / "model"), data=str(tmp_path / "ai.jsonl"),
                               output_dir=str(tmp_path / "dpo"), max_steps=2, micro_batch_size=4, max_length=96,
                               progress=False, ref_cache_dir=str(tmp_path / "dpo-cache")))
    log = read_metrics(out)
    assert len(log) == 2 and all(math.isfinite(r["train/loss"]) for r in log)


@pytest.mark.parametrize("args, message", [
    (["--input", "{d}/missing.jsonl"], "missing.jsonl: file not found"),
    (["--input", "{d}/bad.jsonl"], "bad.jsonl:2: responses: must be a list of at least 2 responses"),
    (["--input", "{d}/poem.jsonl"], "poem.jsonl:1: prompt: not a prompt of the built-in world"),
    (["--input", "{d}/poem.jsonl", "--judge", "http"], "--judge http needs --base-url and --judge-model"),
    (["--input", "{d}/poem.jsonl", "--constitution", "{d}/poem.jsonl"], "poem.jsonl: prompt: unknown key (known: name, judge, principles)"),
])
def test_label_bad_input_exits_2_with_one_line(tmp_path, args, message):
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "What is 1 plus 1?", "responses": ["2", "3"]},
                                         {"prompt": "What is 1 plus 1?", "responses": ["2"]}])
    write_jsonl(tmp_path / "poem.jsonl", [{"prompt": "Write a poem.", "responses": ["a", "b"]}])
    r = _run_cli("cai", "label", *[a.format(d=tmp_path) for a in args], "--output", str(tmp_path / "o.jsonl"))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------ cai revise
def test_rule_revise_writes_trl_sft_rows_with_clean_revisions(tmp_path):
    from rlhfkit import data as data_lib
    from rlhfkit.cai import revise

    cands = world_candidates(n=10, k=3)
    write_jsonl(tmp_path / "cands.jsonl", cands)
    out = revise.run(revise.Config(input=str(tmp_path / "cands.jsonl"), output=str(tmp_path / "sl.jsonl")))
    rows = data_lib.load_rows(str(tmp_path / "sl.jsonl"))  # the SFT loader takes it as prompt/completion
    assert data_lib.detect_type(rows[0]) == data_lib.DataType.PROMPT_COMPLETION
    assert out["responses"] == len(rows) == 30 and 0 < out["revised"] < 30
    for r in rows:
        p, c = r["prompt"][0]["content"], r["completion"][0]["content"]
        assert r["completion"][0]["role"] == "assistant" and not critic.findings(p, c)
        assert r["revised"] == (c != r["original"]) == bool(r["critiques"])
        names = {x.name for x in C.load().principles}
        assert all(x["principle"] in names and x["critique"] for x in r["critiques"])
    only = revise.run(revise.Config(input=str(tmp_path / "cands.jsonl"), output=str(tmp_path / "only.jsonl"),
                                    keep_unrevised=False))
    assert only["rows"] == out["revised"]
    # one principle per response: fewer fixes, each critique names one principle
    one = revise.run(revise.Config(input=str(tmp_path / "cands.jsonl"), output=str(tmp_path / "one.jsonl"),
                                   principles_per_response=1, seed=1))
    assert one["revised"] < out["revised"]
    assert all(len(json.loads(x)["critiques"]) <= 1 for x in (tmp_path / "one.jsonl").read_text().splitlines())


def test_model_revise_runs_the_critique_revision_loop_batched(tmp_path, toy_dir):
    """A tiny random Llama writes noise, but the loop's bookkeeping is checked: one critique per principle,
    greedy decoding gives the same output batched and one by one."""
    from rlhfkit.cai import revise

    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "What is 1 plus 2?", "response": "1 plus 2 is 4."},
                                        {"prompt": [{"role": "user", "content": "What is 3 plus 3?"}],
                                         "completion": [{"role": "assistant", "content": "6."}]},
                                        {"prompt": "Name a color.", "response": "Blue."}])
    kw = dict(input=str(tmp_path / "in.jsonl"), reviser="model", model=str(toy_dir / "model"), max_new_tokens=4,
              principles_per_response=2, seed=3)
    revise.run(revise.Config(**kw, output=str(tmp_path / "b.jsonl"), batch_size=8))
    revise.run(revise.Config(**kw, output=str(tmp_path / "o.jsonl"), batch_size=1))
    b = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    o = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(b) == 3 and [len(r["critiques"]) for r in b] == [2, 2, 2]
    assert [r["completion"] for r in b] == [r["completion"] for r in o]
    assert isinstance(b[0]["completion"], str) and b[1]["completion"][0]["role"] == "assistant"


def test_revise_bad_input_exits_2(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"prompt": "What is 1 plus 1?", "answer": "2"}])
    r = _run_cli("cai", "revise", "--input", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o.jsonl"))
    assert r.returncode == 2 and "x.jsonl:1: <row>: needs response, completion or responses" in r.stderr, r.stderr
    r = _run_cli("cai", "revise", "--input", str(tmp_path / "x.jsonl"), "--reviser", "model")
    assert r.returncode == 2 and "--reviser model needs --model" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------------ agreement
Q = "What is 2 plus 2?"
PAIRS = [("2 plus 2 is 4.", "2 plus 2 is 5."), ("2 plus 2 is 4.", "Great question! 2 plus 2 is 4."),
         ("2 plus 2 is 4.", "Sorry, I can't help with that."), ("2 plus 2 is 4. I hope this helps!", "2 plus 2 is 3.")]


def _pref(i, chosen_first_of_pair, **kw):
    a, b = PAIRS[i]
    c, r = (a, b) if chosen_first_of_pair else (b, a)
    return {"prompt": [{"role": "user", "content": Q}], "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}], **kw}


def test_agreement_worked_example(tmp_path):
    """Sorted responses: in every pair above the first listed sorts first except pair 3 (digits sort before
    letters; "...is 3." < "...is 4. I hope"). Judge prefers: correct, concise, the answer, the padded correct one
    -> categories F F F S. Humans (verbose): correct, padded, answer, padded -> F S F S. Agreement 3/4; chance
    p_e = 3/4 * 1/2 + 1/4 * 1/2 = 1/2, kappa = (3/4 - 1/2) / (1/2) = 1/2. Gold agrees with the judge (1.0), with
    the humans on 3/4. Length (pair 0 has equal word counts, left out): judge picks longer 1/3 (pair 3), humans
    2/3, gold 1/3. Position: P(first shown wins) = mean((p_ab + 1 - p_ba) / 2) = mean(0.6, 0.6, 0.5, 0.7) = 0.6;
    one pair of four changes sides between orders -> consistency 3/4."""
    from rlhfkit.cai import agreement

    p_ab, p_ba = [0.9, 0.8, 0.9, 0.7], [0.7, 0.6, 0.9, 0.3]
    judge = [_pref(i, c, pair=[0, 1], p_ab=p_ab[i], p_ba=p_ba[i], consistent=(p_ab[i] > .5) == (p_ba[i] > .5))
             for i, c in enumerate([True, True, False, True])]
    judge[2]["chosen"], judge[2]["rejected"] = judge[2]["rejected"], judge[2]["chosen"]  # chose the answer
    human = [_pref(i, c, annotator="h") for i, c in enumerate([True, False, True, True])]
    write_jsonl(tmp_path / "j.jsonl", judge)
    write_jsonl(tmp_path / "h.jsonl", human + [_pref(0, True), {**_pref(1, True), "outcome": "tie"}])
    rep = agreement.run(agreement.Config(labels=str(tmp_path / "j.jsonl"), human=str(tmp_path / "h.jsonl"),
                                         output=str(tmp_path / "rep.json")))
    assert rep == json.loads((tmp_path / "rep.json").read_text())
    # the extra human label on pair 0 agrees; the tie is left out
    assert rep["vs_human"] == {"human_labels": 6, "pairs": 5, "ties_left_out": 1, "accuracy": pytest.approx(4 / 5),
                               "kappa": pytest.approx((4 / 5 - (4 / 5 * 3 / 5 + 1 / 5 * 2 / 5)) /
                                                      (1 - (4 / 5 * 3 / 5 + 1 / 5 * 2 / 5)))}
    write_jsonl(tmp_path / "h4.jsonl", human)
    rep = agreement.run(agreement.Config(labels=str(tmp_path / "j.jsonl"), human=str(tmp_path / "h4.jsonl")))
    assert rep["vs_human"]["accuracy"] == 0.75 and rep["vs_human"]["kappa"] == pytest.approx(0.5)
    assert rep["vs_gold"]["accuracy"] == 1.0 and rep["human_vs_gold"]["accuracy"] == 0.75
    lp = rep["length_preference"]
    assert (lp["judge"]["pairs"], lp["judge"]["prefers_longer"]) == (3, pytest.approx(1 / 3))
    assert lp["human"]["prefers_longer"] == pytest.approx(2 / 3) and lp["gold"]["prefers_longer"] == pytest.approx(1 / 3)
    assert rep["position_preference"] == {"pairs": 4, "first_shown_wins": pytest.approx(0.6), "consistency": 0.75}


def test_rule_judge_agrees_with_gold_better_than_verbose_annotators(tmp_path):
    """End to end on the world: annotators (with their verbosity bias) and the rule judge label the same pairs."""
    from rlhfkit.cai import agreement, label
    from rlhfkit.world import label as world_label

    write_jsonl(tmp_path / "cands.jsonl", world_candidates(n=40, k=4))
    world_label.run(world_label.Config(candidates=str(tmp_path / "cands.jsonl"), out=str(tmp_path / "h.jsonl")))
    label.run(label.Config(input=str(tmp_path / "h.jsonl"), output=str(tmp_path / "ai.jsonl")))
    rep = agreement.run(agreement.Config(labels=str(tmp_path / "ai.jsonl"), human=str(tmp_path / "h.jsonl")))
    assert rep["vs_human"]["pairs"] >= 60 and rep["vs_gold"]["pairs"] >= 60
    assert rep["vs_gold"]["accuracy"] > rep["human_vs_gold"]["accuracy"]
    assert rep["position_preference"]["first_shown_wins"] == 0.5 and rep["position_preference"]["consistency"] == 1.0


@pytest.mark.parametrize("sub", ["label", "revise", "agreement"])
def test_cai_subcommands_answer_help(sub):
    from click.testing import CliRunner

    from rlhfkit.cli.main import app

    r = CliRunner().invoke(app, ["cai", sub, "--help"])
    assert r.exit_code == 0 and "--input" in r.output or "--labels" in r.output, r.output
    assert "--api-key " not in r.output  # the key comes from the environment only


def test_every_command_in_the_doc_parses():
    """Each `rlhfkit cai ...` line in docs/ai-feedback.md names real options (a renamed flag breaks this test)."""
    import re
    import shlex
    from pathlib import Path

    import click

    from rlhfkit.cli.main import app

    text = (Path(__file__).resolve().parents[1] / "docs" / "ai-feedback.md").read_text()
    lines = [shlex.split(m.group(1))[1:] for m in re.finditer(r"^\s+(rlhfkit cai [^\n]+)$", text, re.M)]
    assert len(lines) >= 7
    for args in lines:
        ctx = click.Context(app)
        name, group, rest = app.resolve_command(ctx, args)
        name, cmd, rest = group.resolve_command(ctx, rest)
        cmd.make_context(name, list(rest))
