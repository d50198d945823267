"""`rlhfkit bench`'s counters (tools/bench.py Throughput) watch an Engine through `engine.observed`: what timing.json
holds is what the trainer reported, step by step, and a run nobody observes writes no timing.json."""

import json

import pytest
import torch

from rlhfkit.engine import Engine, TrainConfig, observed
from rlhfkit.tools.bench import Throughput


def _run(out, steps=3, loss_values=(2.0, 1.5, 1.25)):
    model = torch.nn.Linear(3, 2)  # 3 x 2 weights + 2 biases = 8 parameters
    engine = Engine(TrainConfig(output_dir=str(out), progress=False), model, total_steps=steps)
    x = torch.ones(4, 3)
    for step in engine.remaining_steps():
        engine.backward(model(x).sum())
        engine.count(samples=4, tokens=10 * (step + 1), gen_tokens=1, gen_s=0.5)  # 10, 20, 30 tokens
        engine.step({"train/loss": torch.tensor(loss_values[step])})
    engine.close()
    return out


def test_throughput_counts_what_the_trainer_reports(tmp_path):
    with observed(Throughput):
        out = _run(tmp_path / "run")
    t = json.loads((out / "timing.json").read_text())
    assert list(t) == ["samples", "tokens", "gen_tokens", "gen_s", "step_s", "step_tokens", "n_params", "final_loss",
                       "loop_s", "steps_run"]
    assert (t["samples"], t["tokens"], t["gen_tokens"], t["gen_s"], t["n_params"]) == (12, 60, 3, 1.5, 8)
    assert t["step_tokens"] == [11, 32, 63]  # cumulative trained + generated tokens at each step's end
    assert t["final_loss"] == 1.25 and t["steps_run"] == 3 and len(t["step_s"]) == 3
    assert t["loop_s"] >= sum(t["step_s"]) * (1 - 1e-6) > 0  # the loop's wall time covers its steps


def test_unobserved_runs_write_no_timing_and_the_block_ends_the_watch(tmp_path):
    with observed(Throughput):
        pass
    assert not (_run(tmp_path / "plain") / "timing.json").exists()
    with pytest.raises(RuntimeError), observed(Throughput):
        raise RuntimeError("a trainer that fails")
    assert not (_run(tmp_path / "after") / "timing.json").exists()
