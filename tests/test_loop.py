"""`rlhfkit loop` at toy scale on the built-in world: two rounds write every round's files and metrics, a resumed
loop skips finished rounds and redoes an unfinished one with the same results, the labelling-app source waits for
its quota of labels (an in-process annotator labels through the app's store), and bad configs fail clearly."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlhfkit import loop
from rlhfkit.diagnostics import rm_pairs
from rlhfkit.cli.main import app


@pytest.fixture(scope="module")
def toy_demo(tmp_path_factory):
    """The toy world's demo stages up to SFT, built once and copied into each loop's OUT/demo (reused there)."""
    from rlhfkit import demo

    d = tmp_path_factory.mktemp("loop-demo") / "demo"
    demo.run(demo.Config(out=str(d), scale="toy", threads=1, annotator_verbosity=0.5, stop_after="sft"))
    return d


def _cfg(out, **kw) -> loop.Config:
    return loop.Config(out=str(out), world=True, scale="toy", threads=1, **kw)


def _with_demo(toy_demo, out):
    shutil.copytree(toy_demo, out / "demo")
    return out


@pytest.fixture(scope="module")
def two_rounds(toy_demo, tmp_path_factory):
    out = _with_demo(toy_demo, tmp_path_factory.mktemp("loop"))
    loop.run(_cfg(out, rounds=2))
    return out


def _metrics(path):
    m = json.loads(path.read_text())
    m.pop("seconds", None)
    return m


def test_two_rounds_write_every_file_and_key(two_rounds):
    out = two_rounds
    for k in (1, 2):
        r = out / f"round_{k}"
        for f in ("prompts.jsonl", "samples.jsonl", "labels.jsonl", "rm_data.jsonl", "eval.json", "metrics.json"):
            assert (r / f).exists(), f"round_{k}/{f}"
        assert (r / "rm" / "config.json").exists() and (r / "policy" / "config.json").exists()
        assert not list(r.glob("*/checkpoints"))  # removed once the round is done
    s = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in s["rounds"]] == [0, 1, 2]
    r1, r2 = s["rounds"][1], s["rounds"][2]
    # round 1 has no earlier reward model; round 2 measures round 1's and its own on the same held-out pairs
    assert "before" not in r1["rm_eval"]["gold"] and "after" in r1["rm_eval"]["gold"]
    for key in ("before", "after", "change"):
        assert key in r2["rm_eval"]["gold"] and key in r2["rm_eval"]["labels"]
    agree = r2["rm_eval"]["labels_vs_gold"]  # the annotators' own agreement with gold on the held-out pairs
    assert 0 < agree["n"] <= r2["rm_eval"]["labels"]["n"] and agree["low"] <= agree["accuracy"] <= agree["high"]
    after = r2["rm_eval"]["gold"]["after"]
    assert after["low"] <= after["accuracy"] <= after["high"]
    for r in s["rounds"]:
        ev = r["eval"]
        assert ev["gold_ci"][0] < ev["gold"] < ev["gold_ci"][1]
    assert s["rounds"][0]["eval"]["kl_to_start"] == 0.0 and "win_rate_vs_start" in r2["eval"]
    assert set(s["comparisons"]) == {"gold_round_2_vs_0", "gold_round_2_vs_1"}
    # the reward model of round 2 trains on round 1's labels (held-out ones too) and round 2's training split
    n1 = len((out / "round_1" / "labels.jsonl").read_text().splitlines())
    labels2 = [json.loads(x) for x in (out / "round_2" / "labels.jsonl").read_text().splitlines()]
    assert r2["rm_eval"]["train_pairs"] == n1 + sum(not x["heldout"] for x in labels2)
    held = {x["group"] for x in labels2 if x["heldout"]}
    assert held and held == loop.heldout_groups(_cfg(out), 2, r2["labels"]["prompts"]) & {x["group"] for x in labels2}
    # the world's larger measurement: the same two reward models on held-out evaluation prompts' samples
    m = r2["rm_eval"]["measure"]
    assert m["prompts"] == loop.SIZES["toy"]["measure_prompts"]
    for key in ("before", "after", "change"):
        assert key in m["gold"] and key in m["labels"]
    eval_prompts = {json.dumps(x["prompt"]) for x in map(json.loads, (out / "demo" / "world" / "heldout_prompts.jsonl")
                                                          .read_text().splitlines())}
    measured = [json.loads(x) for x in (out / "round_2" / "measure_samples.jsonl").read_text().splitlines()]
    assert len(measured) == m["prompts"] and all(json.dumps(x["prompt"]) in eval_prompts for x in measured)
    trained = {json.dumps(json.loads(x)["prompt"]) for x in (out / "round_2" / "rm_data.jsonl").read_text().splitlines()}
    assert not trained & {json.dumps(x["prompt"]) for x in measured}  # never trained on
    state = json.loads((out / "loop_state.json").read_text())
    assert state["rounds_done"] == [1, 2]
    html = (out / "loop_report.html").read_text()
    assert 'id="rounds"' in html and "RM acc before" in html and "labels agree with gold" in html
    assert "held-out evaluation prompts" in html  # the measurement table


def test_rlhfkit_report_on_a_loop_directory_has_the_rounds(two_rounds, tmp_path):
    from rlhfkit.diagnostics import report

    html = report.run(report.Config(run_dirs=[str(two_rounds)], output=str(tmp_path / "r.html"))).read_text()
    assert 'id="rounds"' in html and 'id="curves"' in html  # and each round's trainers' curves


def test_resume_redoes_an_unfinished_round_with_the_same_results(two_rounds, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(two_rounds, out)
    (out / "round_2" / "metrics.json").unlink()  # killed after round 2's steps, before its marker
    (out / "round_2" / "eval.json").unlink()
    capsys.readouterr()
    loop.run(_cfg(out, rounds=2))
    printed = capsys.readouterr().out
    assert "round 1: finished earlier, reused" in printed and "round 2 of 2" in printed
    assert _metrics(out / "round_2" / "metrics.json") == _metrics(two_rounds / "round_2" / "metrics.json")
    assert _metrics(out / "round_1" / "metrics.json") == _metrics(two_rounds / "round_1" / "metrics.json")


def test_a_third_round_also_measures_round_1s_reward_model(two_rounds, tmp_path):
    """From round 3 on, step 3b also scores round 1's reward model on the same pairs: `change_from_first` is the
    paired change from it to the new one (the mean of a paired bootstrap is the difference of the accuracies)."""
    out = tmp_path / "copy"
    shutil.copytree(two_rounds, out)
    loop.run(_cfg(out, rounds=3))  # a finished loop given more rounds continues
    m2 = json.loads((out / "round_2" / "metrics.json").read_text())["rm_eval"]["measure"]
    assert "first" not in m2["gold"] and "change_from_first" not in m2["gold"]
    m3 = json.loads((out / "round_3" / "metrics.json").read_text())["rm_eval"]["measure"]
    measured = [w for w in (m3["gold"], m3["labels"]) if w["n"]]
    assert measured
    for w in measured:
        assert {"first", "before", "after", "change", "change_from_first"} <= set(w)
        assert w["change_from_first"]["mean"] == pytest.approx(w["after"]["accuracy"] - w["first"]["accuracy"])
        assert w["change"]["mean"] == pytest.approx(w["after"]["accuracy"] - w["before"]["accuracy"])
    html = (out / "loop_report.html").read_text()
    assert "Round 1's reward model" in html
    assert "round 3: " in html and "round 2: " not in html
    cands = [json.loads(x) for x in (out / "round_3" / "measure_samples.jsonl").read_text().splitlines()]
    rows = loop.world_labels(_cfg(out), 0 * 1000 + 3 + 500, cands)  # seed 0, round 3: the labels 3b drew
    pairs = rm_pairs.label_pairs(rows, cands)
    items = rm_pairs.pair_items(pairs)
    firsts = [rm_pairs.pair_correct(rm_pairs.model_scores(d, cands, items), pairs)
              for d in loop.replica_dirs(str(out / "round_1" / "rm"))]
    if m3["labels"]["n"]:
        assert m3["labels"]["first"]["replicas"] == pytest.approx([sum(c) / len(c) for c in firsts])
        assert m3["labels"]["first"]["accuracy"] == pytest.approx(sum(map(sum, firsts)) / len(firsts) / len(pairs))


def test_replicas_measure_each_side_as_their_mean(two_rounds):
    """On the world each round trains two replicas beside its reward model (seeds 7919 apart, same data): step 3's
    "before" and "after" are the mean accuracy over the three, each replica's recorded, and PPO's reward is the
    round's own reward model only."""
    r2 = two_rounds / "round_2"
    dirs = loop.replica_dirs(str(r2 / "rm"))
    assert dirs == [str(r2 / "rm"), str(r2 / "rm_replicas" / "replica-1"), str(r2 / "rm_replicas" / "replica-2")]
    seeds = [json.loads((Path(d) / "config.yaml").read_text().split("seed: ")[1].split()[0]) for d in dirs]
    assert seeds == [200, 200 + 7919, 200 + 2 * 7919]  # seed 0, round 2
    assert not list(r2.glob("rm_replicas/*/checkpoints"))
    m = json.loads((r2 / "metrics.json").read_text())["rm_eval"]
    for where in (m, m["measure"]):
        for w in (where["gold"], where["labels"]):
            if w["n"]:
                for side in ("before", "after"):
                    assert len(w[side]["replicas"]) == 3
                    assert w[side]["accuracy"] == pytest.approx(sum(w[side]["replicas"]) / 3)
                assert w["change"]["replicas"] == [3, 3]
    assert "round_2/rm_replicas" not in (r2 / "policy" / "config.yaml").read_text()
    assert "Each side is the mean accuracy of 3 reward models" in (two_rounds / "loop_report.html").read_text()


def test_other_settings_are_refused_on_resume(two_rounds):
    with pytest.raises(ValueError, match=r"other settings \(kl_coef\)"):
        loop.check_state(_cfg(two_rounds, rounds=3, kl_coef=0.5))
    loop.check_state(_cfg(two_rounds, rounds=5))  # more rounds continue the same loop


def test_app_source_waits_for_the_quota(toy_demo, tmp_path):
    """An annotator in a thread labels through the app's store (rankings of the K = 3 responses) while the loop
    polls; the round trains on exactly the labels that came in."""
    from rlhfkit.app import auth
    from rlhfkit.app.db import open_store

    out = _with_demo(toy_demo, tmp_path / "run")
    db = str(tmp_path / "labels.sqlite")
    store = open_store(db)
    uid = store.add_user("ann", "annotator", auth.hash_token("t"))
    stop = threading.Event()

    def annotate():
        while not stop.is_set():
            a = store.next_assignment(uid, overlap=1)
            if a is None:
                stop.wait(0.02)
                continue
            n = store.item(a["item_id"])["n_responses"]
            store.add_label(uid, a["item_id"], uuid.uuid4().hex, "rank", list(range(n)))

    worker = threading.Thread(target=annotate, daemon=True)
    worker.start()
    try:
        loop.run(_cfg(out, rounds=1, label_source="app", app_db=db, quota=10, poll_seconds=0.05,
                      timeout_seconds=120))
    finally:
        stop.set()
        worker.join(5)
    rows = [json.loads(x) for x in (out / "round_1" / "labels.jsonl").read_text().splitlines()]
    assert rows and all(r["item_id"].startswith(loop.app_prefix(_cfg(out), 1)) for r in rows)
    assert len({r["label_id"] for r in rows}) >= 10  # the quota; each ranking gave 3 pairs
    metrics = json.loads((out / "round_1" / "metrics.json").read_text())
    assert metrics["labels"]["pairs"] == len(rows)
    assert "measure" not in metrics["rm_eval"]  # people's labels are not spent on the extra measurement


def test_app_source_times_out_with_a_clear_message(toy_demo, tmp_path):
    out = _with_demo(toy_demo, tmp_path / "run")
    db = str(tmp_path / "labels.sqlite")
    with pytest.raises(TimeoutError, match=r"round 1: 0 of 5 labels .* rerun the same command"):
        loop.run(_cfg(out, rounds=1, label_source="app", app_db=db, quota=5, poll_seconds=0.05,
                      timeout_seconds=0.2))
    assert not (out / "round_1" / "metrics.json").exists()


BAD = [
    ({"rounds": 0}, "rounds must be >= 1, got 0"),
    ({"rm_mode": "reuse"}, "rm_mode: 'reuse' is not one of retrain, continue"),
    ({"algorithm": "grpo"}, "algorithm: 'grpo' is not one of ppo, dpo"),
    ({"label_source": "app"}, "label_source app needs app_db"),
    ({"model": "m"}, "--world builds its own start policy"),
    ({"heldout_fraction": 1.0}, "heldout_fraction must be in (0, 1), got 1.0"),
    ({"measure_prompts": -2}, "measure_prompts must be -1"),
    ({"num_responses": 1}, "num_responses must be 0 or >= 2"),
    ({"rm_ensemble": 0}, "rm_ensemble must be >= 1, got 0"),
    ({"rm_replicas": -1}, "rm_replicas must be >= 0 (0: 3 with --world, else 1), got -1"),
    ({"rm_ensemble": 2, "rm_mode": "continue"}, "rm_mode continue starts from the last round's single"),
]


@pytest.mark.parametrize("fields, message", BAD, ids=[m.split(":")[0].split(" ")[0] for _, m in BAD])
def test_config_errors_are_clear(fields, message, tmp_path):
    with pytest.raises(ValueError) as e:
        loop.run(loop.Config(out=str(tmp_path / "x"), world=True, **fields))
    assert message in str(e.value)
    assert not (tmp_path / "x").exists()  # refused before writing anything


def test_own_model_needs_the_app_source_and_the_cli_says_so(tmp_path):
    with pytest.raises(ValueError, match="model and prompts are required"):
        loop.Config(out=str(tmp_path)).validate()
    r = CliRunner().invoke(app, ["loop", "--model", "m", "--prompts", "p", "--output-dir", str(tmp_path / "x")])
    assert r.exit_code == 2 and "label_source world labels with the built-in world" in r.output, r.output


def test_app_rounds_push_count_and_export_by_prefix(tmp_path):
    """Items of two rounds in one database: pushing again adds nothing, counts and exports see only their round,
    and every exported pair says which candidates row it came from."""
    from rlhfkit.app import auth, rounds
    from rlhfkit.app.db import open_store

    store = open_store(str(tmp_path / "db.sqlite"))
    cands = [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(3)]
    assert rounds.push(store, cands, "r1-") == 3 and rounds.push(store, cands, "r1-") == 0
    assert rounds.push(store, cands[:1], "r2-") == 1
    uid = store.add_user("ann", "annotator", auth.hash_token("t"))
    labelled = {}
    while (a := store.next_assignment(uid, overlap=1)) is not None:
        item = store.item(a["item_id"])
        store.add_label(uid, a["item_id"], uuid.uuid4().hex, "left")
        labelled[item["ext_id"]] = json.loads(item["responses_json"])[json.loads(a["shown_order"])[0]]
    assert rounds.labelled(store, "r1-") == 3 and rounds.labelled(store, "r2-") == 1
    rows = rounds.export(store, "r1-")
    assert sorted(r["group"] for r in rows) == [0, 1, 2]
    assert all(r["chosen"] == labelled[r["item_id"]] and r["prompt"] == f"p{r['group']}" for r in rows)


def test_dpo_with_a_continued_reward_model_and_the_current_policy_as_reference(toy_demo, tmp_path):
    out = _with_demo(toy_demo, tmp_path / "run")
    loop.run(_cfg(out, rounds=2, algorithm="dpo", rm_mode="continue", kl_reference="current"))
    r2 = json.loads((out / "round_2" / "metrics.json").read_text())
    assert r2["rm_eval"]["init"] == "round_1/rm" and "before" in r2["rm_eval"]["gold"]
    for i in (1, 2):  # each replica continues its own line
        rep = (out / "round_2" / "rm_replicas" / f"replica-{i}" / "config.yaml").read_text()
        assert f"round_1/rm_replicas/replica-{i}\n" in rep
    dpo_cfg = (out / "round_2" / "policy" / "config.yaml").read_text()
    assert "round_1/policy" in dpo_cfg and "ref_model: ''" in dpo_cfg  # from pi_1, KL to pi_1 itself
    rows = (out / "round_2" / "dpo_data.jsonl").read_text().splitlines()
    assert rows and not any(json.loads(x)["heldout"] for x in rows)  # this round's training split only


def test_an_ensemble_reward_model_trains_members_scores_ppo_and_measures(toy_demo, tmp_path):
    out = _with_demo(toy_demo, tmp_path / "run")
    loop.run(_cfg(out, rounds=2, rm_ensemble=2))
    for k in (1, 2):
        rm_dir = out / f"round_{k}" / "rm"
        assert json.loads((rm_dir / "rlhfkit.json").read_text())["ensemble"] == ["member-0", "member-1"]
        assert all((rm_dir / f"member-{i}" / "config.json").exists() for i in (0, 1))
    m = json.loads((out / "round_2" / "metrics.json").read_text())
    for where in (m["rm_eval"], m["rm_eval"]["measure"]):
        assert "change" in where["gold"] and "accuracy" in where["gold"]["after"]
    ppo_cfg = (out / "round_2" / "policy" / "config.yaml").read_text()
    assert "round_2/rm/member-0" in ppo_cfg  # the critic from one member; the reward is the ensemble
    assert m["eval"]["gold"] is not None
    loop.run(_cfg(out, rounds=2, rm_ensemble=2))  # finished rounds reused
    with pytest.raises(ValueError, match="rm_ensemble"):
        loop.run(_cfg(out, rounds=2))


def test_measure_table_lists_round_1s_reward_model_from_round_3():
    """report_loop.measure_table: a round with `first` gets a line "round k: gold order first -> after, change";
    rounds without it get none, and the text is escaped."""
    from rlhfkit.diagnostics import report_loop

    def acc(a):
        return {"accuracy": a, "low": a - 0.05, "high": a + 0.05}

    change = {"mean": 0.1, "low": 0.02, "high": 0.18}
    r2 = {"round": 2, "rm_eval": {"measure": {"prompts": 4, "gold": {
        "n": 10, "before": acc(0.5), "after": acc(0.6), "change": change}}}}
    r3 = {"round": 3, "rm_eval": {"measure": {"prompts": 4, "gold": {
        "n": 10, "first": acc(0.4), "before": acc(0.5), "after": acc(0.6), "change": change,
        "change_from_first": {"mean": 0.2, "low": 0.1, "high": 0.3}}}}}
    html = report_loop.measure_table({"rounds": [r2, r3]})
    line = "<li>round 3: gold order 0.400 [0.350, 0.450] -&gt; 0.600 [0.550, 0.650], +0.200 [+0.100, +0.300]</li>"
    assert line in html
    assert "round 2:" not in html
    assert "Round 1" not in report_loop.measure_table({"rounds": [r2]})
