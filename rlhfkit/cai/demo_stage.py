"""The demo's AI-feedback stage (RLAIF on the built-in world, Lee et al. 2023) and summary.json's `ai_feedback`.

The world's rule-based constitutional judge relabels the very pairs the simulated annotators labelled in the prefs
stage (no new samples), both presentation orders averaged; its labels are set against the annotators' and against
gold (`cai.agreement`). demo.py then trains a reward model and a DPO policy on the judge's labels with the
human-label stages' own code and settings, and the eval stage judges that policy (`dpo_ai`) with gold beside the
human-label one (`dpo`).

    ai_feedback/labels.jsonl   every pair as the judge labelled it, its ties kept (outcome "tie")
    ai_feedback/train.jsonl    the same without the ties: what the reward model and DPO learn from
"""

from __future__ import annotations

from rlhfkit import data as data_lib
from rlhfkit.cai import agreement, label
from rlhfkit.cai.options import JudgeConfig, build_judge

RLAIF_POLICY, HUMAN_POLICY = "dpo_ai", "dpo"
N_EXAMPLES = 3  # pairs where judge and annotators disagree, shown in the report


def _preferred(lab: agreement.Label) -> str | None:
    return {"first": lab.first, "second": lab.second}.get(lab.category)


def disagreements(judge: list[agreement.Label], human: list[agreement.Label], n: int = N_EXAMPLES) -> list[dict]:
    """The first `n` pairs (in the annotators' file order) that judge and annotators decided differently, with
    the side gold takes: what the report shows of the two kinds of label."""
    by_key = {lab.key: lab for lab in judge}
    out = []
    for h in human:
        j = by_key.get(h.key)
        if j is None or "tie" in (j.category, h.category) or j.category == h.category:
            continue
        g = agreement.gold_category(h)
        out.append({"prompt": h.prompt, "judge_prefers": _preferred(j), "annotators_prefer": _preferred(h),
                    "gold_sides_with": None if g is None else ("judge" if g == j.category else "annotators")})
        if len(out) == n:
            break
    return out


def relabel(human: str, out_dir: str, judge_cfg: JudgeConfig | None = None) -> dict:
    """Judge every pair of the annotators' preference file `human` (the rule-based judge by default), write
    labels.jsonl and train.jsonl under `out_dir`, and measure the judge against the annotators and gold."""
    cfg = judge_cfg or JudgeConfig()
    pairs = label.read_pairs(human)
    if cfg.judge == "rule":
        label.check_world_prompts(pairs)
    judge = build_judge(cfg, default_cache=f"{out_dir}/judge-cache.jsonl")
    rows, counts = label.label_pairs(judge, pairs, ties="keep", swap=cfg.swap, progress=False)
    labels_path = data_lib.write_jsonl(rows, f"{out_dir}/labels.jsonl")
    train = [r for r in rows if r["outcome"] != "tie"]
    if not train:
        raise ValueError(f"{human}: the {cfg.judge} judge found every one of its {len(rows)} pairs a tie: no AI "
                         "labels to train on")
    train_path = data_lib.write_jsonl(train, f"{out_dir}/train.jsonl")
    judged, annotated = agreement.read_labels(str(labels_path)), agreement.read_labels(human)
    rep = agreement.agreement(judged, annotated, use_gold=True)
    return {"judge": judge.name, "labels": str(labels_path), "train": str(train_path),
            "pairs": counts["pairs"], "judge_ties": counts["ties"], "train_pairs": len(train),
            "position_consistency": counts["position_consistency"],
            "first_shown_wins": rep["position_preference"]["first_shown_wins"],
            "vs_gold": rep["vs_gold"], "vs_annotators": rep["vs_human"], "annotators_vs_gold": rep["human_vs_gold"],
            "prefers_longer": {{"human": "annotators"}.get(k, k): v["prefers_longer"]
                               for k, v in rep["length_preference"].items()},
            "disagreements": disagreements(judged, annotated)}


def _policy(name: str, policies: dict) -> dict:
    p = policies.get(name) or {}
    return {"policy": name, "gold": p.get("gold"), "gold_se": p.get("gold_se"),
            "win_rate_vs_sft": p.get("win_rate_vs_sft")}


def summary(stage: dict, policies: dict) -> dict:
    """summary.json's `ai_feedback` from the stage's result and the evaluated policies (the eval stage's gold;
    None where it has not run, e.g. under --stop-after)."""
    return {
        "judge": stage["judge"],
        "judge_gold_accuracy": stage["vs_gold"]["accuracy"],
        "judge_gold_kappa": stage["vs_gold"]["kappa"],
        "judge_annotator_accuracy": stage["vs_annotators"]["accuracy"],
        "judge_annotator_kappa": stage["vs_annotators"]["kappa"],
        "annotator_gold_accuracy": stage["annotators_vs_gold"]["accuracy"],
        "annotator_gold_kappa": stage["annotators_vs_gold"]["kappa"],
        "position_consistency": stage["position_consistency"],
        "first_shown_wins": stage["first_shown_wins"],
        # pairs behind each number: accuracies count pairs both sides decided (judge ties and gold ties left out)
        "pairs": {"annotated": stage["pairs"], "judge_ties": stage["judge_ties"], "train": stage["train_pairs"],
                  "judge_vs_gold": stage["vs_gold"]["pairs"], "judge_vs_annotators": stage["vs_annotators"]["pairs"],
                  "annotators_vs_gold": stage["annotators_vs_gold"]["pairs"]},
        "prefers_longer": stage["prefers_longer"],
        "rm": stage.get("rm"),
        "policies": {"rlaif": _policy(RLAIF_POLICY, policies), "human": _policy(HUMAN_POLICY, policies)},
        "disagreements": stage["disagreements"],
    }
