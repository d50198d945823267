"""The world's tool-use tasks: questions a small model cannot answer in its head, but can with a tool.

Two kinds, each with an exact answer and one tool that gives it:
- ``multiply``  "What is 47 times 82?": the product of two `digits`-digit numbers (2 by default), past the
  single-digit arithmetic the world's models learn; the `calculator` tool (rollout.builtin_tools) computes it exactly.
- ``lookup``    "What is the code of Velmora?": a 4-digit code of a made-up place, from a table drawn per seed
  (`place_table`) that no pretraining or SFT text contains; the `lookup` tool (a `LookupTable` over that table)
  returns it.

Rows follow TRL's tool-calling format: tasks are `{"prompt": [user], "tools": [schemas], "answer", "kind", "id"}`,
demonstrations `{"messages": [user, assistant with tool_calls, tool result, assistant answer], "tools"}` (or, for a
share the caller sets, [user, assistant guessing without the tool]: `ToolWorld.demos`). The schemas
here are exactly what transformers' `get_json_schema` derives from the built-in tools (a test checks it), written
out because the world imports nothing outside itself.

Success is exact: the last number in the final answer is the right value (`success`). The trajectory reward
(`ToolWorld.reward`) gives a wrong answer partial credit for its digits in the right place, and subtracts for an
episode without a well-formed call, for malformed calls and for calls beyond the one needed, so RL learns to call,
well-formed, and to stop. Places and operand pairs fall in three splits by hash (`split_of_key`): `train`
(demonstrations and drills), `rl` (the RL tasks: names and pairs no SFT row holds, so reward comes from copying what
the tool returns, not from recalling a code seen in a demonstration) and `heldout` (evaluation only). Within a
split, tasks repeat no place and no operand pair until the split has none left (`tasks`): an RL run of 3,200
prompts meets each rl place about once, so what raises its reward is the copy, which carries to held-out places, and
not the rl places' own codes, which do not (docs/benchmarks.md "Tool use (#31)"). Pure Python, seeded: the same seed
gives the same table and tasks.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

TOOL_KINDS: tuple[str, ...] = ("multiply", "lookup")
DRILL_KINDS: tuple[str, ...] = ("operands", "name", "result")  # the copies of `ToolWorld.drills`
HELDOUT_PERCENT = 25  # share of places and operand pairs (by hash) reserved for held-out tasks
RL_PERCENT = 40  # share reserved for RL tasks (after the held-out share); the rest is the SFT rows' `train` split
SPLITS: tuple[str, ...] = ("train", "rl", "heldout")
PARTIAL = 0.5  # the reward's weight on the digits of a wrong answer that are right (`ToolWorld.reward`)

CALCULATOR_SCHEMA = {"type": "function", "function": {
    "name": "calculator",
    "description": "Evaluate an arithmetic expression exactly, with integers and decimals of any size.",
    "parameters": {"type": "object", "properties": {"expression": {
        "type": "string", "description": "The arithmetic to evaluate, using numbers, + - * / // % ** and "
                                         "parentheses, e.g. \"(17 * 23) / 4\"."}}, "required": ["expression"]},
    "return": {"type": "string"}}}
LOOKUP_SCHEMA = {"type": "function", "function": {
    "name": "lookup", "description": "Look up a fact in the reference table.",
    "parameters": {"type": "object", "properties": {"key": {
        "type": "string", "description": "The name of the entry to look up, e.g. \"capital of Zorbia\"."}},
        "required": ["key"]},
    "return": {"type": "string"}}}
TOOL_SCHEMAS = (CALCULATOR_SCHEMA, LOOKUP_SCHEMA)

# Made-up place names: two or three syllables, capitalised; none is a word of the world's other texts. Three-syllable
# names make the table large (4,000 places): with two syllables only there are 400 names, each split holds a few
# dozen to two hundred, and a model trained on them recalls a seen name ("Jerbel") where the prompt asks an unseen one
# ("Jergor"); the RL split, a few dozen places, is small enough for GRPO to learn its codes instead of the copy.
SYLLABLES = ("ka", "lo", "mi", "ven", "tor", "sa", "ri", "bel", "dun", "fa", "gor", "hal", "nu", "jer", "pol",
             "qua", "ske", "tem", "vo", "zan")
MULTIPLY_QUESTIONS = ("What is {a} times {b}?", "Compute {a} times {b}.")
LOOKUP_QUESTIONS = ("What is the code of {p}?", "Look up the code of {p}.")
ANSWER = "The answer is {v}."
_MULTIPLY_RE = re.compile(r"(\d+) times (\d+)")
_LOOKUP_RE = re.compile(r"code of ([A-Z][a-z]+)")
_NUMBER_RE = re.compile(r"-?\d+")


def split_of_key(key: str) -> str:
    """The split of a place name or an operand pair ("347*829"): a stable hash, salted apart from the prompts'."""
    h = int.from_bytes(hashlib.sha256(f"tool:{key}".encode()).digest()[:8], "big") % 100
    return "heldout" if h < HELDOUT_PERCENT else "rl" if h < HELDOUT_PERCENT + RL_PERCENT else "train"


def place_table(seed: int, n: int = 4000) -> dict[str, str]:
    """`n` made-up places -> 4-digit codes, drawn from the seed (codes are strings: what the lookup tool returns)."""
    if not 1 <= n <= 4000:  # 400 two-syllable and 8,000 three-syllable names exist; half leaves room for the draw
        raise ValueError(f"n_places must be in 1..4000, got {n}")
    rng = random.Random(f"rlhfkit-world:{seed}:tool-places")
    names: dict[str, str] = {}
    while len(names) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        names.setdefault(name, str(rng.randint(1000, 9999)))
    return names


@dataclass(frozen=True)
class ToolTask:
    kind: str  # one of TOOL_KINDS
    answer: str  # the exact value, as text (what the tool returns)
    arguments: dict = field(compare=False)  # the one call that answers it: {"expression": ...} or {"key": ...}

    @property
    def tool(self) -> str:
        return "calculator" if self.kind == "multiply" else "lookup"


@dataclass
class ToolWorld:
    """One seed's tool tasks: the place table, task generation, the success check and the trajectory reward."""

    seed: int = 0
    digits: int = 2
    """Digits of each factor of a multiply task. With 3, tool-SFT writes the right call for nearly every
    multiplication and copies the 6-digit result into its answer for few (0.016 of held-out tasks; 0.95-0.97 with
    2: docs/benchmarks.md "Tool use (#31)")."""
    n_places: int = 4000
    """Places in the lookup table."""
    table: dict[str, str] = field(init=False)
    _places: list[str] = field(init=False, repr=False)  # the table's names, sorted: what lookup tasks draw from

    def __post_init__(self):
        if not 2 <= self.digits <= 6:
            raise ValueError("digits must be in 2..6")
        self.table = place_table(self.seed, self.n_places)
        self._places = sorted(self.table)

    # --- tasks ------------------------------------------------------------------------------------------------
    def parse(self, prompt: str) -> ToolTask:
        """The task a prompt text asks, from its text (and this seed's table). Raises ValueError on other text."""
        m = _MULTIPLY_RE.search(prompt)
        if m:
            a, b = int(m[1]), int(m[2])
            return ToolTask("multiply", str(a * b), {"expression": f"{a}*{b}"})
        m = _LOOKUP_RE.search(prompt)
        if m and m[1] in self.table:
            return ToolTask("lookup", self.table[m[1]], {"key": m[1]})
        raise ValueError(f"not a tool task of world seed {self.seed}: {prompt!r}")

    def _draw(self, rng: random.Random, kind: str, split: str, used: set[str]) -> str:
        """A task of `kind` in `split` whose place or operand pair is not in `used` (which it joins); once the
        split has no unused one left, `used` starts over."""
        for _ in range(2):
            for _ in range(10_000):
                if kind == "multiply":
                    lo, hi = 10 ** (self.digits - 1), 10 ** self.digits - 1
                    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
                    key, text = f"{a}*{b}", rng.choice(MULTIPLY_QUESTIONS).format(a=a, b=b)
                else:
                    key = rng.choice(self._places)
                    text = rng.choice(LOOKUP_QUESTIONS).format(p=key)
                if key not in used and split_of_key(key) == split:
                    used.add(key)
                    return text
            used.clear()  # 10,000 draws found no unused key of the split: it is spent (or nearly), start over
        raise RuntimeError(f"no {kind} task in split {split}")  # never: each split holds a fifth or more

    def tasks(self, n: int, split: str = "train", stream: str = "tasks") -> list[dict]:
        """`n` task rows of `split`, kinds alternating: {"prompt": [user], "tools", "answer", "kind", "id"}.
        No place or operand pair repeats until the split runs out of them. Deterministic in (seed, n, split,
        stream); a longer list extends a shorter one."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        rng = random.Random(f"rlhfkit-world:{self.seed}:tool-{stream}:{split}")
        rows, used = [], {k: set() for k in TOOL_KINDS}  # per kind: a spent kind starts over alone
        for i in range(n):
            kind = TOOL_KINDS[i % len(TOOL_KINDS)]
            text = self._draw(rng, kind, split, used[kind])
            rows.append({"prompt": [{"role": "user", "content": text}], "tools": [dict(s) for s in TOOL_SCHEMAS],
                         "answer": self.parse(text).answer, "kind": kind, "id": f"tool-{split}-{self.seed}-{i}"})
        return rows

    def demos(self, n: int, skip: float = 0.0) -> list[dict]:
        """`n` demonstrations on train-split tasks (the RL tasks are rl-split, the evaluation held-out): the user
        asks, the assistant calls the one tool that answers, reads its result and answers with it. TRL's format.

        `skip`: the share of demonstrations in which the demonstrator does not call the tool and answers with a
        guess (`guess`), drawn per row from the seed, as a hurried human demonstrator does. A policy imitating them
        skips the tool as often; an outcome reward, which a guess almost never earns, is what tells the two apart
        (the demonstrations' flaws are why InstructGPT optimises a reward after SFT: Ouyang et al. 2022, sec. 1)."""
        if not 0.0 <= skip < 1.0:
            raise ValueError(f"skip must be in [0, 1), got {skip}")
        rng = random.Random(f"rlhfkit-world:{self.seed}:tool-demo-skips")
        out = []
        for row in self.tasks(n, "train", stream="demos"):
            task = self.parse(row["prompt"][0]["content"])
            if rng.random() < skip:
                turns = [{"role": "assistant", "content": ANSWER.format(v=self.guess(task, rng))}]
            else:
                call = {"type": "function", "function": {"name": task.tool, "arguments": dict(task.arguments)}}
                turns = [{"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "name": task.tool, "content": task.answer},
                         {"role": "assistant", "content": ANSWER.format(v=task.answer)}]
            out.append({"messages": row["prompt"] + turns, "tools": row["tools"], "kind": row["kind"]})
        return out

    def guess(self, task: ToolTask, rng: random.Random) -> str:
        """A demonstrator's answer without the tool: a product of the factors rounded to one significant digit
        (47 times 82 -> 50 x 80 = 4000), or, for a code, a 4-digit number from `rng`. Right only by chance."""
        if task.kind == "multiply":
            a, b = (int(x) for x in task.arguments["expression"].split("*"))
            return str(_round1(a) * _round1(b))
        return str(rng.randint(1000, 9999))

    def drills(self, n: int) -> list[dict]:
        """`n` copy drills, chat rows without tools, kinds alternating: the three copies a tool episode needs,
        practised alone in short rows, each with the tokens of the episode's own copy. "Copy 47 times 82." ->
        "47*82" (the operands into the calculator's expression: the prompt's " 4" "7" become "4" "7"),
        "Copy Velmo." -> "Velmo" (a place into the lookup's key; train-split places only, as in the demos), and a
        bare number as the whole message, as a tool's result is, -> "The answer is 3854." (the result into the
        answer). Operand pairs are drawn from the train split, so no RL or held-out pair appears in any SFT row.
        Training a needed skill first and then mixing it into the next objective so it is not forgotten is what
        InstructGPT's PPO-ptx does with pretraining data (Ouyang et al. 2022, sec. 3.5); measurements in
        demo_tools.TOOL_SCALES."""
        rng = random.Random(f"rlhfkit-world:{self.seed}:tool-drills")
        lo, hi = 10 ** (self.digits - 1), 10 ** self.digits - 1
        train_places = [p for p in sorted(self.table) if split_of_key(p) == "train"]
        out = []
        for i in range(n):
            kind = DRILL_KINDS[i % len(DRILL_KINDS)]
            if kind == "operands":
                a, b = rng.randint(lo, hi), rng.randint(lo, hi)
                while split_of_key(f"{a}*{b}") != "train":
                    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
                user, answer = f"Copy {a} times {b}.", f"{a}*{b}"
            elif kind == "name":
                v = rng.choice(train_places)
                user, answer = f"Copy {v}.", v
            else:  # a product's or a code's digits, as the tool returns them
                v = str(rng.randint(lo, hi) * rng.randint(lo, hi) if rng.random() < 0.5 else rng.randint(1000, 9999))
                user, answer = v, ANSWER.format(v=v)
            out.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                        "kind": f"drill_{kind}"})
        return out

    # --- judging ----------------------------------------------------------------------------------------------
    def success(self, prompt: str, answer: str) -> bool:
        """The task is solved: the last number in the final answer text is the exact value."""
        numbers = _NUMBER_RE.findall(answer or "")
        return bool(numbers) and numbers[-1] == self.parse(prompt).answer

    def reward(self, prompt: str, answer: str, calls: int | None = None, malformed: int = 0) -> float:
        """The trajectory reward: 1 for a correct final answer, else `PARTIAL` x the share of its digits in the right
        place (`digit_credit`); minus 0.5 when the episode has no well-formed call (none tried, or only malformed
        ones), and, once it has one, 0.1 per malformed call before it (at most 0.3) and 0.1 per well-formed call
        beyond the one a task needs. Correctness dominates (the most a wrong answer earns is 0.5 x 5/6). The digit
        credit gives GRPO a gradient toward copying the tool's result where exact copies are rare (tool-SFT writes
        the right call for nearly every multiplication and the right product for few: docs/benchmarks.md "Tool use
        (#31)"). Not calling and calling only malformed score the same: GRPO scales each group's rewards by their
        standard deviation, so any gap between the two, however small, became a full-size push, and with malformed
        calls scored lower the policy learnt to stop calling instead of fixing the format (docs/benchmarks.md).
        `calls` None (a caller without episodes): only exact success counts."""
        if calls is None:
            return float(self.success(prompt, answer))
        credit = digit_credit(self.parse(prompt).answer, answer)  # 1.0 exactly when `success`
        correct = 1.0 if credit == 1.0 else PARTIAL * credit
        if calls == 0:
            return correct - 0.5
        return correct - min(0.3, 0.1 * malformed) - 0.1 * (calls - 1)

    def rewards(self, prompts: list[str], responses: list[str], calls: list[int] | None = None,
                malformed: list[int] | None = None) -> list[float]:
        """`reward` per episode, in the `module:function` reward signature (prompt texts, answer texts) plus the
        episodes' call counts when the trainer has them."""
        n = len(prompts)
        calls, malformed = calls or [None] * n, malformed or [0] * n
        return [self.reward(p, r, c, m) for p, r, c, m in zip(prompts, responses, calls, malformed, strict=True)]


def _round1(x: int) -> int:
    """`x` rounded to one significant digit, halves up: 47 -> 50, 82 -> 80, 150 -> 200."""
    scale = 10 ** (len(str(x)) - 1)
    return (x + scale // 2) // scale * scale


def digit_credit(expected: str, answer: str) -> float:
    """The share of `expected`'s digits that the answer's last number has in the same place, 0 when that number has
    another length or there is none: "The answer is 102996." against 170046 -> 2/6 (the first and last digits)."""
    got = answer_value(answer)
    if got is None or len(got) != len(expected):
        return 0.0
    return sum(a == b for a, b in zip(got, expected)) / len(expected)


def answer_value(answer: str) -> str | None:
    """The last number in an answer text (what `success` compares), or None."""
    numbers = _NUMBER_RE.findall(answer or "")
    return numbers[-1] if numbers else None
