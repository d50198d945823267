"""Constitutional AI pieces that need no model: the constitution file (loading, every validation error names
`path: field: reason`) and the world's rule-based critic (detects each bad style from text, revises to the ideal
answer, never reads gold)."""

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
