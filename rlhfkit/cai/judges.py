"""Judges behind one small interface, with position-swap debiasing.

    judge.compare(prompts, responses_a, responses_b) -> [P(a better)]     # both orders, averaged
    judge.score(prompts, responses) -> [score]                            # pointwise
    judge.consistency                                                     # share of pairs judged alike in both orders

Prompts and responses are plain text (a conversational prompt's last user message; `label` does the reading).
A judge implements `compare_ordered(prompts, first, second) -> [P(first better)]` and `score`; the base class
asks each pair in both orders in one batch and averages, because LLM judges favour a position (Zheng et al. 2023,
"Judging LLM-as-a-Judge", Sec. 3.3; Lee et al. 2023 average the two orders for RLAIF labels as well). The share of
pairs whose winner is the same in both orders is the consistency rate reported next to every labelling run.

- `RuleJudge`  the built-in world's rule-based constitutional judge (`rlhfkit.world.critic`): text only, no model
- `HFJudge`    a local Hugging Face causal LM: the next-token probability of "A" vs "B" (and "Yes" vs "No" for a
               score) after the constitution's judging prompt, read from the logits rather than parsed from text
- `HTTPJudge`  an OpenAI-compatible endpoint (`rlhfkit.cai.http_judge`)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from rlhfkit.cai.constitution import Constitution


class JudgeError(RuntimeError):
    """A judge could not give a verdict (a prompt it cannot read, an endpoint that keeps failing)."""


@dataclass
class PairVerdicts:
    """Both orders of a batch of pairs. All probabilities are P(a better), whatever order the judge saw."""

    p: list[float]
    """The debiased probability: the mean of the two orders."""
    p_ab: list[float]
    """Judged with a shown first."""
    p_ba: list[float]
    """Judged with b shown first (converted back to P(a better))."""
    consistent: list[bool] = field(default_factory=list)
    """Same winner in both orders (a tie in both also counts)."""


def _side(p: float) -> int:
    return (p > 0.5) - (p < 0.5)


class Judge:
    """Base of the judges: swap debiasing and the consistency count; subclasses give `compare_ordered`/`score`."""

    name = "judge"

    def __init__(self) -> None:
        self.pairs_judged = 0
        self.pairs_consistent = 0

    def compare_ordered(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def compare_detailed(self, prompts: Sequence[str], responses_a: Sequence[str],
                         responses_b: Sequence[str], swap: bool = True) -> PairVerdicts:
        n = len(prompts)
        if not n == len(responses_a) == len(responses_b):
            raise ValueError(f"compare: {n} prompts, {len(responses_a)} a-responses, {len(responses_b)} b-responses")
        if not swap:
            p = self.compare_ordered(prompts, responses_a, responses_b)
            return PairVerdicts(p, p, p, [True] * n)
        both = self.compare_ordered([*prompts, *prompts], [*responses_a, *responses_b], [*responses_b, *responses_a])
        p_ab, p_ba = both[:n], [1.0 - x for x in both[n:]]
        consistent = [_side(x) == _side(y) for x, y in zip(p_ab, p_ba)]
        self.pairs_judged += n
        self.pairs_consistent += sum(consistent)
        return PairVerdicts([(x + y) / 2 for x, y in zip(p_ab, p_ba)], p_ab, p_ba, consistent)

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        """P(a better) per pair, averaged over both presentation orders."""
        return self.compare_detailed(prompts, responses_a, responses_b).p

    @property
    def consistency(self) -> float | None:
        """Share of the pairs judged so far whose winner did not depend on the order shown (None before any)."""
        return self.pairs_consistent / self.pairs_judged if self.pairs_judged else None


# ------------------------------------------------------------------------------------------------ rule-based
class RuleJudge(Judge):
    """The world's rule-based constitutional judge: score = minus the constitution-weighted violations that
    `world.critic` finds in the response text; P(a better) = sigmoid((score_a - score_b) / temperature).
    Only principles with a `rule` count. Symmetric by construction, so its consistency is 1."""

    name = "rule"

    def __init__(self, constitution: Constitution, temperature: float = 0.5):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.weights: dict[str, float] = {}
        for p in constitution.principles:
            if p.rule:
                self.weights[p.rule] = self.weights.get(p.rule, 0.0) + p.weight
        if not self.weights:
            raise JudgeError(f"{constitution.path}: no principle has a `rule`, so the rule-based judge has nothing "
                             "to check")
        self.temperature = temperature

    def score(self, prompts, responses):
        from rlhfkit.world import critic

        out = []
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            try:
                out.append(critic.score(p, r, self.weights))
            except ValueError as e:
                raise JudgeError(f"rule judge: pair {i}: {e} (the rule-based judge reads built-in world prompts "
                                 "only; use --judge hf or http for other data)") from None
        return out

    def compare_ordered(self, prompts, first, second):
        s1, s2 = self.score(prompts, first), self.score(prompts, second)
        return [1.0 / (1.0 + math.exp(-(x - y) / self.temperature)) for x, y in zip(s1, s2)]


# ------------------------------------------------------------------------------------------- local HF model
class HFJudge(Judge):
    """A local causal LM as judge. The constitution's judging prompt goes in as a user turn (through the chat
    template when the tokenizer has one); P(A better) = softmax over the next-token logits of the two answer
    tokens only, so the verdict is a probability even when the model would rather say something else (Lee et al.
    2023 read RLAIF preferences the same way). Rows are right-padded and read at their last real token, so a
    batch gives what one-by-one gives. Prompts longer than `max_length` tokens are cut from the left (the
    question and the answer cue are at the end)."""

    name = "hf"

    def __init__(self, model, tokenizer, constitution: Constitution, batch_size: int = 8, max_length: int = 1024,
                 answer_tokens: tuple[str, str] = ("A", "B"), score_tokens: tuple[str, str] = ("Yes", "No")):
        super().__init__()
        self.model, self.tokenizer, self.constitution = model.eval(), tokenizer, constitution
        self.batch_size, self.max_length = batch_size, max_length
        self.answer_ids = self._token_pair(answer_tokens)
        self.score_ids = self._token_pair(score_tokens)

    @classmethod
    def from_pretrained(cls, path: str, constitution: Constitution, trust_remote_code: bool = False, **kw):
        from rlhfkit import models

        tok = models.load_tokenizer(path, trust_remote_code)
        model = models.load_causal_lm(path, tok, trust_remote_code).to(models.inference_device())
        return cls(model, tok, constitution, **kw)

    def _token_pair(self, words: tuple[str, str]) -> tuple[int, int]:
        ids = []
        for w in words:
            toks = self.tokenizer.encode(w, add_special_tokens=False)
            if not toks:
                raise JudgeError(f"hf judge: the tokenizer has no token for answer {w!r}")
            ids.append(toks[0])  # the first token decides: the model commits to "A" or "B" there
        if ids[0] == ids[1]:
            raise JudgeError(f"hf judge: answers {words} start with the same token; they cannot be told apart")
        return ids[0], ids[1]

    def _encode(self, text: str) -> list[int]:
        from rlhfkit import data as data_lib

        if getattr(self.tokenizer, "chat_template", None):
            ids = data_lib.encode_prompt(self.tokenizer, [{"role": "user", "content": text}])
        else:
            ids = self.tokenizer(text + "\n", add_special_tokens=True)["input_ids"]
        return ids[-self.max_length:]

    def _prob_first(self, texts: list[str], ids: tuple[int, int]) -> list[float]:
        import torch

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[float] = []
        for s in range(0, len(texts), self.batch_size):
            enc = [self._encode(t) for t in texts[s : s + self.batch_size]]
            T = max(map(len, enc))
            input_ids = torch.full((len(enc), T), pad, dtype=torch.long)
            mask = torch.zeros((len(enc), T), dtype=torch.long)
            for i, e in enumerate(enc):
                input_ids[i, : len(e)] = torch.tensor(e)
                mask[i, : len(e)] = 1
            last = [len(e) - 1 for e in enc]
            keep = sorted(set(last))
            col = torch.tensor([keep.index(t) for t in last], device=device)
            with torch.no_grad():
                kw = dict(input_ids=input_ids.to(device), attention_mask=mask.to(device))
                try:
                    # only the rows' last positions through the LM head: full (B, T, V) logits of a large
                    # vocabulary would cost gigabytes for one answer token per row
                    logits = self.model(**kw, logits_to_keep=torch.tensor(keep, device=device)).logits  # (B, K, V)
                except TypeError:  # a model without `logits_to_keep`
                    logits = self.model(**kw).logits[:, keep]  # (B, K, V)
            pick = logits[torch.arange(len(enc), device=device), col][:, list(ids)].float()  # (B, 2)
            out += torch.softmax(pick, dim=-1)[:, 0].tolist()
        return out

    def compare_ordered(self, prompts, first, second):
        fmt = self.constitution.pairwise
        texts = [fmt.format(prompt=p, response_a=a, response_b=b) for p, a, b in zip(prompts, first, second,
                                                                                      strict=True)]
        return self._prob_first(texts, self.answer_ids)

    def score(self, prompts, responses):
        """P("Yes") against "No" after the pointwise prompt."""
        fmt = self.constitution.pointwise
        texts = [fmt.format(prompt=p, response=r) for p, r in zip(prompts, responses, strict=True)]
        return self._prob_first(texts, self.score_ids)
