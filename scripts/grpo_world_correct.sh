#!/usr/bin/env bash
# GRPO with a verifiable reward on the built-in world (issue #6): reward 1 when the response shows the ideal
# behaviour (rlhfkit.world:correct_reward: right answer, refusal of a harmful request, admitting not knowing,
# correcting a wrong belief), 0 otherwise; then the held-out correct rate and gold against SFT.
# Needs a finished `rlhfkit demo` (R=runs/demo by default). About 5 minutes on 2 cores.
set -euo pipefail
R=${R:-runs/demo}
OUT=${OUT:-runs/grpo-correct}
.venv/bin/rlhfkit grpo --model "$R/sft" --data "$R/world/train_prompts.jsonl" \
  --reward-model rlhfkit.world:correct_reward --output-dir "$OUT" --num-generations 8 --rollout-batch-size 8 \
  --micro-batch-size 32 --gradient-accumulation-steps 2 --learning-rate 1e-4 --lr-scheduler constant --beta 0.04 \
  --max-new-tokens 48 --max-steps 40 --seed 0 --threads 2 --no-progress
.venv/bin/rlhfkit eval --policies "sft=$R/sft,grpo=$OUT" --prompts "$R/world/heldout_prompts.jsonl" \
  --judges correct=rlhfkit.world:correct_reward --gold rlhfkit.world:gold_reward --reference sft --ref-model "$R/sft" \
  --max-new-tokens 48 --output "$OUT/eval.json" --seed 0
