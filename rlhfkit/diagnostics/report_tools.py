"""The report's "Tool use" section: the demo's tool_use stage (summary.json `tool_use`, rlhfkit/demo_tools.py).

Task success of three policies on the same held-out tool tasks (no tools offered; tools after SFT on demonstrations;
tools after RL), each with its 95% Wilson interval, the malformed-call rate, and the RL run's malformed-call rate at
its first and last step. Comparisons are read off the intervals, never hard-coded. One episode transcript per policy
is shown as inert text: every message (the model's own tool calls and the tools' results included) is escaped."""

from __future__ import annotations

import json

from rlhfkit.diagnostics.report_ai import interval_order
from rlhfkit.diagnostics.report_html import _num, esc, fmt, table

POLICY_ROLES = {"no_tool": "the SFT model, no tools offered", "tool_sft": "SFT on tool demonstrations",
                "tool_rl": "GRPO from tool_sft, tools in the loop"}
ORDER = {"above": "above", "below": "below", "overlap": "indistinguishable from"}


def _success(p: dict) -> tuple[float, float, float] | None:
    s = p.get("success") if isinstance(p, dict) else None
    v = tuple(_num(s.get(k)) for k in ("mean", "low", "high")) if isinstance(s, dict) else (None,)
    return None if None in v else v  # type: ignore[return-value]


def _message_text(m: dict) -> str:
    """One message as a line of plain text: role, content, and each tool call as name(arguments JSON)."""
    if not isinstance(m, dict):
        return str(m)
    calls = [c.get("function", {}) for c in m.get("tool_calls") or [] if isinstance(c, dict)]
    parts = [str(m.get("content") or "")] + [f"[calls {c.get('name')}({json.dumps(c.get('arguments'))})]"
                                             for c in calls]
    return f"{m.get('role', '?')}: " + " ".join(x for x in parts if x)


def transcript(t: dict) -> str:
    """An episode as escaped text inside a pre-wrapped block (nothing a model wrote is ever markup)."""
    lines = [_message_text(m) for m in t.get("messages") or []]
    verdict = "solved" if t.get("success") else f"not solved (expected {t.get('answer_expected')})"
    return f'<div class="text resp">{esc(chr(10).join(lines))}</div><p>{esc(verdict)}; stop: {esc(t.get("stop"))}</p>'


def demos_line(tu: dict) -> str:
    """What tool-SFT imitated: how many demonstrations, and the share that answer without the tool."""
    n, skip = _num(tu.get("n_demos")), _num(tu.get("demo_skip"))
    if n is None:
        return ""
    text = f"Tool-SFT imitates {int(n)} demonstrations"
    if skip:
        text += (f", {100 * skip:.0f}% of which answer with a guess instead of calling the tool, as a hurried "
                 "demonstrator does; RL's reward is the outcome, which a guess almost never earns")
    return f"<p>{esc(text)}.</p>"


def section_tool_use(summary: dict) -> str:
    tu = summary.get("tool_use")
    if not isinstance(tu, dict):
        return ""
    pol = tu.get("policies") or {}
    rows = []
    for name, p in pol.items():
        s = _success(p)
        kinds = p.get("success_by_kind") if isinstance(p.get("success_by_kind"), dict) else {}
        rows.append([f"<b>{esc(name)}</b>", esc(POLICY_ROLES.get(name, "")),
                     f"{s[0]:.3f} [{s[1]:.3f}, {s[2]:.3f}]" if s else fmt(None),
                     fmt(_num(kinds.get("multiply"))), fmt(_num(kinds.get("lookup"))),
                     fmt(_num(p.get("malformed_call_rate"))), fmt(_num(p.get("calls_per_episode")), 2)])
    digits = _num(tu.get("digits"))
    numbers = f"two {int(digits)}-digit numbers" if digits else "two numbers"
    out = ['<section id="tools"><h2>10. Tool use</h2>',
           f"<p>Tasks the model cannot do in its head: multiplying {numbers} (the <code>calculator</code> "
           "tool) and the code of a made-up place from a table no training text contains (the <code>lookup</code> "
           f"tool). {fmt(tu.get('n_heldout'))} held-out tasks (places and numbers no training row holds), one "
           f"episode each of at most {fmt(tu.get('max_turns'))} assistant turns, sampled at temperature "
           f"{fmt(_num(tu.get('temperature')), 1)}. Success: the last number of the final answer is the exact value "
           "(95% Wilson interval). Malformed calls: tool calls that are not valid JSON, name no tool or give "
           "arguments that do not fit its schema, over every call the policy attempted.</p>",
           demos_line(tu),
           table(["policy", "what it is", "success [95% CI]", "multiply", "lookup", "malformed-call rate",
                  "calls per episode"], rows)]
    verdicts = []
    rl, sft_, none = (_success(pol.get(k) or {}) for k in ("tool_rl", "tool_sft", "no_tool"))
    if rl and sft_:
        verdicts.append(f"after RL, success is {ORDER[interval_order(rl[1:], sft_[1:])]} the tool-SFT policy's")
    if rl and none:
        verdicts.append(f"{ORDER[interval_order(rl[1:], none[1:])]} the no-tool policy's")
    if verdicts:
        text = "; ".join(verdicts)
        out.append(f"<p><b>{esc(text[:1].upper() + text[1:])}</b> (95% intervals compared).</p>")
    curve = tu.get("rl") or {}
    first, last = curve.get("first") or {}, curve.get("last") or {}
    if first and last:
        span = lambda w: "-".join(fmt(x) for x in (w.get("steps") or [])[:2])  # noqa: E731
        out.append(f"<p>During RL ({fmt(curve.get('steps'))} steps) the malformed-call rate of the sampled episodes "
                   f"went from {fmt(_num(first.get('malformed_call_rate')))} (mean of steps {span(first)}) to "
                   f"{fmt(_num(last.get('malformed_call_rate')))} (steps {span(last)}), the calls per episode from "
                   f"{fmt(_num(first.get('calls_per_episode')), 2)} to {fmt(_num(last.get('calls_per_episode')), 2)}, "
                   f"and the mean reward from {fmt(_num(first.get('score')))} to {fmt(_num(last.get('score')))}.</p>")
    shown = [(name, p.get("transcript")) for name, p in pol.items() if isinstance(p.get("transcript"), dict)]
    if shown:
        out.append("<p>The first held-out task, one episode per policy, exactly as it ran (shown as plain text):</p>")
        out.append(table(["policy", "episode"], [[f"<b>{esc(n)}</b>", transcript(t)] for n, t in shown], "samples"))
    out.append("</section>")
    return "\n".join(out)
