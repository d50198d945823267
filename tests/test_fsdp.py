"""--fsdp (FSDP2) under torchrun on the CPU (gloo), and the multi-node rendezvous launch.

Every comparison holds the global batch fixed: 2 processes x micro-batch 4 (FSDP2 or DDP) against 1 process x
micro-batch 4 x 2 accumulated. The losses of 5 steps agree to fp32 rounding (rel 1e-5): FSDP's reduce-scatter and
DDP's all-reduce sum the same gradients in another order. Each test launches a few tiny runs (2-layer Llama,
hidden 32), one thread per process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.engine import TrainConfig, checkpoint, read_metrics

PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [PY, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()),
            "-m", "rlhfkit.cli.main", *args]


def cli(*args: str) -> list[str]:
    return [PY, "-m", "rlhfkit.cli.main", *args]


def run(cmd: list[str], env: dict | None = None) -> None:
    r = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]


def losses(run_dir: Path) -> list[float]:
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r["train/loss"] for r in rows]


def assert_close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b) and a == pytest.approx(b, rel=1e-5, abs=1e-6), (a, b)


def sft_args(toy_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["sft", "--model", str(toy_dir / "model"), "--data", str(toy_dir / "sft.jsonl"), "--output-dir", str(out),
            "--no-progress", "--learning-rate", "3e-3", "--micro-batch-size", "4", "--threads", "1",
            "--lr-scheduler", "constant", *extra]


@pytest.fixture(scope="module")
def sft_runs(toy_dir, tmp_path_factory):
    """5 SFT steps three ways: one process accumulating 2 micro-batches, DDP and FSDP2 over 2 processes."""
    d = tmp_path_factory.mktemp("fsdp_sft")
    run(cli(*sft_args(toy_dir, d / "one", "--max-steps", "5", "--gradient-accumulation-steps", "2")))
    run(torchrun(*sft_args(toy_dir, d / "ddp", "--max-steps", "5")))
    run(torchrun(*sft_args(toy_dir, d / "fsdp", "--max-steps", "5", "--fsdp")))
    return d


def test_sft_fsdp_equals_ddp_and_one_process_and_exports_one_model(sft_runs):
    """FSDP2 over 2 ranks == DDP over 2 ranks == 1 rank, step by step; its final save is one safetensors model that
    plain transformers loads, with the DDP run's logits; its checkpoint is sharded (one file per rank)."""
    from transformers import AutoModelForCausalLM

    fsdp, ddp, one = (losses(sft_runs / name) for name in ("fsdp", "ddp", "one"))
    assert len(set(one)) == 5  # it trained
    assert_close(fsdp, ddp)
    assert_close(fsdp, one)
    assert [p.name for p in (sft_runs / "fsdp").glob("*.safetensors")] == ["model.safetensors"]
    ids = torch.tensor([[1, 5, 9, 14, 20, 7]])
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(sft_runs / "fsdp").eval()(ids).logits
        want = AutoModelForCausalLM.from_pretrained(sft_runs / "ddp").eval()(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    ckpt = checkpoint.latest(sft_runs / "fsdp" / "checkpoints")
    names = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file())
    assert "state-rank0.pt" in names and "state-rank1.pt" in names
    assert sum(n.startswith("sharded/") and n.endswith(".distcp") for n in names) == 2, names
    manifest = json.loads((ckpt / checkpoint.MANIFEST).read_text())
    assert set(manifest["files"]) == set(names) - {checkpoint.MANIFEST, checkpoint.COMPLETE}  # the shards are hashed


def test_sharded_checkpoint_without_fsdp_is_a_clear_error(toy_dir, sft_runs, tmp_path):
    """A sharded checkpoint resumed by a run without --fsdp: one line saying so, no traceback."""
    shutil.copytree(sft_runs / "fsdp", tmp_path / "run")
    r = subprocess.run(cli(*sft_args(toy_dir, tmp_path / "run", "--max-steps", "6", "--resume")), env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "a sharded (--fsdp) checkpoint: resume it with --fsdp under torchrun" in r.stderr
    assert "Traceback" not in r.stderr


def test_two_nodes_by_rendezvous_equal_one_node(toy_dir, sft_runs, tmp_path):
    """torchrun --nnodes 2 --node-rank 0/1 --rdzv-backend c10d --rdzv-endpoint host:port, one process per "node"
    (two local launches, as two machines would run it): the same run as 2 processes on one node."""
    port = free_port()
    launches = []
    for node in (0, 1):
        cmd = [PY, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "rlhfkit-test",
               "-m", "rlhfkit.cli.main", *sft_args(toy_dir, tmp_path / "nodes", "--max-steps", "5")]
        launches.append(subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in launches:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-4000:]
    assert_close(losses(tmp_path / "nodes"), losses(sft_runs / "ddp"))


def test_fsdp_kill9_then_resume_from_the_sharded_checkpoint(toy_dir, tmp_path):
    """kill -9 of every process mid-run, after a sharded checkpoint; --resume: the losses of the uninterrupted run,
    every step exactly once."""
    steps = 40
    args = ("--max-steps", str(steps), "--save-every", "5", "--fsdp")
    run(torchrun(*sft_args(toy_dir, tmp_path / "full", *args)))
    proc = subprocess.Popen(torchrun(*sft_args(toy_dir, tmp_path / "crash", *args)), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = checkpoint.complete_checkpoints(tmp_path / "crash" / "checkpoints")
        if done and int(done[-1].name.split("-")[1]) >= 10:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks at once
    proc.wait()
    assert not (tmp_path / "crash" / "model.safetensors").exists()
    run(torchrun(*sft_args(toy_dir, tmp_path / "crash", *args, "--resume")))
    assert losses(tmp_path / "crash") == losses(tmp_path / "full")  # bit-identical (CPU fp32, same ranks)


def test_dpo_lora_with_gradient_checkpointing_under_fsdp_equals_one_process(toy_dir, tmp_path):
    """DPO with LoRA (the reference is the policy with its adapters off) and --gradient-checkpointing under FSDP2
    == one process without checkpointing; --merge writes the adapter and a merged model, both loadable."""
    import peft
    from transformers import AutoModelForCausalLM

    from test_dpo import pref_rows

    data = write_jsonl(tmp_path / "pref.jsonl", pref_rows(16))
    common = ["dpo", "--model", str(toy_dir / "model"), "--data", str(data), "--no-progress", "--threads", "1",
              "--learning-rate", "1e-2", "--max-steps", "5", "--max-length", "48", "--micro-batch-size", "4",
              "--lr-scheduler", "constant", "--lora-r", "4", "--merge"]
    run(cli(*common, "--gradient-accumulation-steps", "2", "--output-dir", str(tmp_path / "one")))
    run(torchrun(*common, "--fsdp", "--gradient-checkpointing", "--output-dir", str(tmp_path / "fsdp")))
    one, fsdp = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert len(set(one)) > 1
    assert_close(fsdp, one)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp")
    base = AutoModelForCausalLM.from_pretrained(toy_dir / "model")
    adapted = peft.PeftModel.from_pretrained(base, tmp_path / "fsdp" / "adapter").merge_and_unload()
    ids = torch.tensor([[1, 5, 9, 14, 20, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-5)
        ref = AutoModelForCausalLM.from_pretrained(tmp_path / "one")(ids).logits
        torch.testing.assert_close(merged(ids).logits, ref, rtol=1e-4, atol=1e-4)


def fsdp_equals_ddp(args: list[str], out: Path, env: dict | None = None) -> None:
    for mode in ("ddp", "fsdp"):
        run(torchrun(*args, *(["--fsdp"] if mode == "fsdp" else []), "--output-dir", str(out / mode)), env)
    ddp = losses(out / "ddp")
    assert len(set(ddp)) > 1
    assert_close(losses(out / "fsdp"), ddp)


def test_dpo_with_a_sharded_reference_equals_ddp(toy_dir, tmp_path):
    """Full fine-tuning DPO, whose frozen reference copy is sharded too: FSDP2 == DDP over 2 processes."""
    from test_dpo import pref_rows

    data = write_jsonl(tmp_path / "pref.jsonl", pref_rows(16))
    fsdp_equals_ddp(["dpo", "--model", str(toy_dir / "model"), "--data", str(data), "--no-progress", "--threads", "1",
                     "--learning-rate", "3e-3", "--max-steps", "3", "--max-length", "48", "--micro-batch-size", "4"],
                    tmp_path)


def test_grpo_equals_ddp(toy_dir, tmp_path):
    """GRPO with a KL term: rollouts sample with the layers gathered once (ranks sample different lengths), the
    sharded reference scores them; FSDP2 == DDP over 2 processes, the same samples and losses."""
    rows = [json.loads(x) for x in (toy_dir / "sft.jsonl").read_text().splitlines()]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in rows])
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(HERE), ENV.get("PYTHONPATH", "")])}  # test_grpo's reward
    fsdp_equals_ddp(["grpo", "--model", str(toy_dir / "model"), "--data", str(prompts), "--reward-model",
                     "test_grpo:has_number", "--no-progress", "--threads", "1", "--learning-rate", "1e-2",
                     "--max-steps", "3", "--rollout-batch-size", "2", "--num-generations", "4", "--micro-batch-size",
                     "4", "--max-new-tokens", "6", "--beta", "0.1", "--lr-scheduler", "constant"], tmp_path, env)


def test_fsdp_config_checks():
    for bad in (dict(fsdp=True, precision="bf16", weights_dtype="bf16"), dict(fsdp=True, precision="fp16"),
                dict(fsdp=True, lora_r=4, load_in_4bit=True)):
        with pytest.raises(ValueError, match="fsdp"):
            TrainConfig(**bad).validate()
    TrainConfig(fsdp=True, precision="bf16").validate()
    from rlhfkit.algorithms import grpo

    with pytest.raises(ValueError, match="monitor_prompts"):
        grpo.Config(model="m", data="d", fsdp=True, monitor_prompts="p.jsonl", monitor_every=5).validate()
    from rlhfkit.algorithms import ppo

    with pytest.raises(ValueError, match="critic shared"):
        ppo.Config(model="m", data="d", fsdp=True, lora_r=4).validate()
    ppo.Config(model="m", data="d", fsdp=True, lora_r=4, critic="shared").validate()


def test_one_process_fsdp_is_a_plain_run(toy_dir, sft_runs, tmp_path):
    """--fsdp without torchrun has nothing to shard: the usual run (the same losses) and checkpoint."""
    run(cli(*sft_args(toy_dir, tmp_path / "a", "--max-steps", "5", "--gradient-accumulation-steps", "2", "--fsdp")))
    assert losses(tmp_path / "a") == losses(sft_runs / "one")
    assert (checkpoint.latest(tmp_path / "a" / "checkpoints") / "model.safetensors").exists()



def test_a_worker_ends_with_its_exit_code_and_message(toy_dir, sft_runs, tmp_path):
    """Workers that joined the group leave through exit_worker (no interpreter teardown while a gloo group lives):
    an error raised after joining still exits 2 with its one-line message and no traceback."""
    shutil.copytree(sft_runs / "fsdp", tmp_path / "run")
    r = subprocess.run(torchrun(*sft_args(toy_dir, tmp_path / "run", "--max-steps", "6", "--resume")), env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "a sharded (--fsdp) checkpoint: resume it with --fsdp under torchrun" in r.stderr
    assert "exitcode  : 2" in r.stderr
    assert not re.search(r'File ".*rlhfkit/(cli|engine|algorithms)/', r.stderr)  # the launcher's traceback only
