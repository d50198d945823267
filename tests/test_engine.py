"""Training engine: batch semantics, NaN guard, crash-safe checkpoints, exact resume after kill -9, DDP == accumulation."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import kill_when_checkpointed
from rlhfkit.engine import checkpoint
from rlhfkit.engine import Engine, NonFiniteError, StepSampler, TrainConfig, read_metrics, resolve_batch

PY = sys.executable


def test_batch_semantics_are_checked():
    cfg = TrainConfig(micro_batch_size=4, gradient_accumulation_steps=2, global_batch_size=16)
    assert resolve_batch(cfg, world_size=2) == 16
    with pytest.raises(ValueError, match="global_batch_size 16 != micro_batch_size 4 x gradient_accumulation_steps 2 x world_size 1 = 8"):
        resolve_batch(cfg, world_size=1)


def test_step_sampler_is_a_function_of_the_step():
    a, b = StepSampler(20, 4, seed=3), StepSampler(20, 4, seed=3)
    seq = [a.indices(s) for s in range(10)]
    assert seq == [b.indices(s) for s in reversed(range(10))][::-1]  # order of calls does not matter
    assert sorted(sum(seq[:5], [])) == list(range(20))  # one epoch covers every example once
    assert seq[:5] != seq[5:]  # epochs are reshuffled


def _toy_engine(tmp_path, **kw):
    model = torch.nn.Linear(3, 1)
    cfg = TrainConfig(output_dir=str(tmp_path), progress=False, learning_rate=0.1, **kw)
    return model, Engine(cfg, model, total_steps=10)


def test_nan_loss_skips_the_step_and_k_in_a_row_abort(tmp_path, recwarn):
    model, engine = _toy_engine(tmp_path, max_nonfinite_steps=2)
    x = torch.ones(2, 3)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(x).sum() * float("nan")  # injected NaN
    engine.backward(loss)
    assert engine.step({"train/loss": loss.item()}) is False
    # the skipped step advances the schedule on purpose, without torch's "scheduler before optimizer" warning
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # weights untouched
    engine.backward(model(x).sum())  # a good step resets the count and updates
    assert engine.step({}) is True
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    engine.backward(model(x).sum() * float("inf"))
    engine.step({}, batch_info="indices [7, 9]")
    engine.backward(model(x).sum() * float("nan"))
    with pytest.raises(NonFiniteError, match=r"2 consecutive .* step 4 \(indices \[7, 9\]\)"):
        engine.step({}, batch_info="indices [7, 9]")
    engine.close()
    logged = read_metrics(tmp_path)
    assert [r.get("train/skipped_nonfinite", 0) for r in logged] == [1, 0, 1, 1]  # the aborting step is logged too


def test_nonfinite_abort_names_the_step_metrics_jsonl_logs(tmp_path):
    """The abort message numbers steps as metrics.jsonl does (from 1), and the aborting step's record is written
    first, even between log_every steps, so the step it names can be looked up."""
    model, engine = _toy_engine(tmp_path, max_nonfinite_steps=2, log_every=100)
    x = torch.ones(2, 3)
    for _ in range(3):  # steps 1-3 train, unlogged (log_every 100)
        engine.backward(model(x).sum())
        engine.step({"train/loss": 1.0})
    engine.backward(model(x).sum() * float("nan"))
    engine.step({"train/loss": float("nan")})  # step 4: skipped
    engine.backward(model(x).sum() * float("inf"))
    with pytest.raises(NonFiniteError, match=r"last at step 5 \(indices \[3\]\)"):
        engine.step({"train/loss": float("inf")}, batch_info="indices [3]")  # step 5: skipped again, abort
    engine.close()
    assert [(r["step"], r["train/loss"], r["train/skipped_nonfinite"]) for r in read_metrics(tmp_path)] == \
        [(5, "inf", 1)]


def test_failure_mid_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    checkpoint.save(tmp_path, 1, model, {"step": 1}, keep=1)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)

    def broken(staging, model, state):
        (staging / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full (injected)")

    monkeypatch.setattr(checkpoint, "_write_files", broken)
    with pytest.raises(OSError, match="injected"):
        checkpoint.save(tmp_path, 2, model, {"step": 2}, keep=1)
    latest = checkpoint.latest(tmp_path)
    assert latest.name == "step-00000001"  # the half-written step 2 is ignored, step 1 was not pruned
    fresh = torch.nn.Linear(3, 2)
    state = checkpoint.load(latest, fresh)
    assert state["step"] == 1
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())


def test_retention_and_corruption_detection(tmp_path):
    model = torch.nn.Linear(2, 2)
    for s in (1, 2, 3):
        checkpoint.save(tmp_path, s, model, {"step": s}, keep=2)
    names = [p.name for p in checkpoint.complete_checkpoints(tmp_path)]
    assert names == ["step-00000002", "step-00000003"]
    # flip bytes in the newest: its hash no longer matches, so resume falls back to the previous one
    f = tmp_path / "step-00000003" / "state.pt"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    assert checkpoint.latest(tmp_path).name == "step-00000002"
    checkpoint.prune(tmp_path, keep=0)  # keep=0 still keeps one
    assert len(checkpoint.complete_checkpoints(tmp_path)) == 1


def _sft_cmd(toy_dir, out, *extra):
    return [PY, "-m", "rlhfkit.cli.main", "sft", "--model", str(toy_dir / "model"), "--data", str(toy_dir / "sft.jsonl"),
            "--output-dir", str(out), "--no-progress", "--learning-rate", "3e-3", "--micro-batch-size", "4", *extra]


def _losses(run_dir):
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir)}


def test_kill9_then_resume_gives_identical_losses(toy_dir, tmp_path):
    steps = 300  # long enough after the last possible kill point that a loaded machine still catches the run alive
    args = ["--max-steps", str(steps), "--save-every", "10", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_sft_cmd(toy_dir, tmp_path / "full", *args), check=True, env=env, capture_output=True)
    ref = _losses(tmp_path / "full")
    assert sorted(ref) == list(range(1, steps + 1))

    kill_after = random.Random().randrange(20, 120, 10)  # a random checkpoint to die after
    proc = subprocess.Popen(_sft_cmd(toy_dir, tmp_path / "crash", *args), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "crash" / "checkpoints"
    kill_when_checkpointed(proc, ckpts, kill_after)
    assert not (tmp_path / "crash" / "model.safetensors").exists()  # it really died mid-run
    subprocess.run(_sft_cmd(toy_dir, tmp_path / "crash", *args, "--resume"), check=True, env=env,
                   capture_output=True)
    got = _losses(tmp_path / "crash")
    assert sorted(got) == list(range(1, steps + 1))  # every step exactly once
    assert got == ref  # bit-identical per-step losses (CPU fp32)


def test_two_processes_equal_one_process_with_accumulation(toy_dir, tmp_path):
    """torchrun --nproc_per_node 2 (gloo) with micro 4 == one process with micro 4 x accumulation 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--max-steps", "6", "--threads", "1"]
    subprocess.run(_sft_cmd(toy_dir, tmp_path / "one", *common, "--gradient-accumulation-steps", "2"),
                   check=True, env=env, capture_output=True)
    ddp = [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
           "-m", "rlhfkit.cli.main", *_sft_cmd(toy_dir, tmp_path / "two", *common)[3:]]
    r = subprocess.run(ddp, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for s in one:
        assert abs(one[s] - two[s]) <= 1e-5 * max(1.0, abs(one[s])), (s, one[s], two[s])


LEAVE_SCRIPT = """
import glob, sys
from rlhfkit import engine
engine.setup_distributed()
import transformers.models.llama.modeling_llama  # imports torch._dynamo, as every trainer's model loading does
engine._leave_process_group()  # what atexit runs
names = sorted(open(t + "/comm").read().strip() for t in glob.glob("/proc/self/task/*"))
print("THREADS", names, file=sys.stderr)
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads thread names from /proc (Linux)")
def test_leaving_the_group_stops_gloos_threads(tmp_path):
    """A rank must leave no gloo thread for the interpreter's teardown: one left there aborted a rank at exit
    ("terminate called without an active exception") in about 1 of 10 two-process runs, because torch._dynamo,
    imported after the group was created, kept it alive. Deterministic: checks the threads, not the abort."""
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_SCRIPT)
    r = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(30500 + os.getpid() % 1000), str(script)],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("THREADS")]
    assert len(lines) == 2 and not any("gloo" in line for line in lines), lines


def test_checkpoint_pruned_while_read_counts_as_incomplete(tmp_path, monkeypatch):
    """A reader (a monitor, the kill-9 test's poll) can list a checkpoint that the trainer prunes before the reader
    stats its files: that checkpoint is simply not complete, never an exception."""
    from rlhfkit.engine import checkpoint

    path = checkpoint.save(tmp_path, 10, torch.nn.Linear(2, 2), {"step": 10})
    assert checkpoint.complete_checkpoints(tmp_path) == [path]
    real_stat = Path.stat

    def vanished(self, *a, **k):  # the file disappears between the manifest read and its stat
        if self.name == "model.safetensors":
            raise FileNotFoundError(self)
        return real_stat(self, *a, **k)

    monkeypatch.setattr(Path, "stat", vanished)
    assert checkpoint.complete_checkpoints(tmp_path) == []
    assert checkpoint.latest(tmp_path) is None


def test_gradient_checkpointing_gives_the_same_training(toy_dir, tmp_path):
    """--gradient-checkpointing recomputes activations in the backward pass: the same losses and weights, on the
    SFT path and the DPO layout path (keyword arguments reach the attention through the checkpointed layers)."""
    from rlhfkit.algorithms import dpo, sft
    from conftest import write_jsonl
    from test_dpo import pref_rows

    pref = write_jsonl(tmp_path / "pref.jsonl", pref_rows(16))
    for name, train, kw in (("sft", sft, dict(data=str(toy_dir / "sft.jsonl"))),
                            ("dpo", dpo, dict(data=str(pref), max_length=48))):
        runs = []
        for gc in (False, True):
            c = train.Config(model=str(toy_dir / "model"), output_dir=str(tmp_path / f"{name}{gc}"), max_steps=3,
                             micro_batch_size=4, learning_rate=1e-3, progress=False, gradient_checkpointing=gc, **kw)
            runs.append([r["train/loss"] for r in read_metrics(train.train(c))])
        assert runs[0] == pytest.approx(runs[1], rel=1e-5), name


def test_save_every_0_checkpoints_at_the_end_and_resume_says_finished(tmp_path, capsys):
    """save_every 0 writes one checkpoint, at the end; --resume on the finished run loads it, trains nothing and
    says the run is finished (no "no complete checkpoint" error), and writes no further checkpoint."""
    model, engine = _toy_engine(tmp_path)
    x = torch.ones(2, 3)
    for _ in engine.remaining_steps():
        engine.backward(model(x).sum())
        engine.step({})
    engine.close()
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path / "checkpoints")] == ["step-00000010"]
    again, resumed = _toy_engine(tmp_path, resume=True)
    assert resumed.step_count == 10 and list(resumed.remaining_steps()) == []
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert "resume: the run is finished: checkpoint step-00000010 is at step 10 of 10" in capsys.readouterr().out
    assert len(checkpoint.complete_checkpoints(tmp_path / "checkpoints")) == 1
    assert len(read_metrics(tmp_path)) == 10  # the resumed run kept the log whole


def test_bf16_weights_update_fp32_master_copies(tmp_path):
    """weights_dtype bf16: the model's weights are bf16, AdamW updates fp32 masters. An update smaller than bf16's
    spacing at 1.0 (2^-7 = 0.0078) is lost by a bf16 weight but adds up in the master: 40 steps of lr 1e-4 (Adam's
    first steps move by ~lr each) take a weight of 1.0 to ~0.996 in the master and, once rounded, to 0.99609375
    (the bf16 neighbour below 1.0) in the model, never 1.0 - 40 * 1e-4 exactly representable in bf16."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    cfg = TrainConfig(output_dir=str(tmp_path), progress=False, learning_rate=1e-4, lr_scheduler="constant",
                      precision="bf16", weights_dtype="bf16", max_grad_norm=0)
    engine = Engine(cfg, model, total_steps=40)
    assert model.weight.dtype == torch.bfloat16 and engine.master[0].dtype == torch.float32
    x = torch.ones(1, 1)
    for _ in engine.remaining_steps():
        engine.backward(model(x.bfloat16()).float().sum())  # d/dw = 1 > 0: w falls by ~lr per step
        engine.step({})
    master = float(engine.master[0])
    assert 1.0 - 40 * 1e-4 - 1e-5 < master < 1.0 - 40 * 1e-4 + 1e-5
    assert float(model.weight.detach()) == 0.99609375  # the master rounded to bf16
    engine.close()


def test_bf16_weights_resume_exactly(tmp_path):
    """A bf16-weights run resumed from its step-4 checkpoint continues from the fp32 masters, not from the rounded
    bf16 weights: the same masters and weights at step 6 as the uninterrupted run."""
    import shutil

    def run(out, resume=False):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        cfg = TrainConfig(output_dir=str(out), progress=False, learning_rate=1e-3, precision="bf16",
                          weights_dtype="bf16", save_every=2, resume=resume)
        engine = Engine(cfg, model, total_steps=6)
        for step in engine.remaining_steps():
            x = torch.randn(4, 3, generator=torch.Generator().manual_seed(step))
            engine.backward(model(x.bfloat16()).float().pow(2).mean())
            engine.step({})
        engine.close()
        return engine, model

    full, w_full = run(tmp_path / "full")
    shutil.copytree(tmp_path / "full" / "checkpoints", tmp_path / "again" / "checkpoints")  # steps 2 and 4
    again, w_again = run(tmp_path / "again", resume=True)
    assert again.resumed_from.name == "step-00000004"
    assert all(torch.equal(a, b) for a, b in zip(full.master, again.master))
    assert all(torch.equal(a, b) for a, b in zip(w_full.parameters(), w_again.parameters()))
    assert not torch.equal(full.master[0], full.master[0].bfloat16().float())  # masters hold more than bf16


def test_weights_dtype_bf16_needs_bf16_precision():
    with pytest.raises(ValueError, match="weights_dtype"):
        TrainConfig(weights_dtype="bf16").validate()
