"""The 2D detection quality script on a tiny dataset (oracle, plain and made multi-view)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mvxray import detectors2d
from mvxray.benchmarks.detect2d import main, run, split_options


def test_detect2d_script_scores_plain_multiview_and_rescored_rows(
    two_case_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data", str(two_case_dataset), "--detectors", "oracle", "--multiview", "--rescore"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress", "--threads", "1"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["detector"]: r for r in doc["results"]}
    assert set(rows) == {"oracle", "oracle+multiview", "oracle+multiview+fpr"}
    assert rows["oracle"]["recall@1fp"] == 1.0
    # The projected 3D boxes of the exact 2D boxes are the 2D boxes again.
    assert rows["oracle+multiview"]["recall@1fp"] == 1.0
    assert rows["oracle+multiview"]["ap50"] > 0.95
    # Re-scored by a classifier fitted on case "a": the two indications of "b" still come first.
    fpr = rows["oracle+multiview+fpr"]
    assert fpr["recall@1fp"] == 1.0 and fpr["ap50"] > 0.95 and fpr["train_s"] > 0


def test_detect2d_trains_on_several_datasets_and_scores_an_independent_test_set(
    two_case_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both cases (train "a", test "b") of the same dataset are the independent test set here:
    # 2 cases × 5 views, whereas the test splits alone would be 1 case per dataset.
    argv = ["--data", str(two_case_dataset), str(two_case_dataset), "--test", str(two_case_dataset)]
    argv += ["--detectors", "oracle", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, "--threads", "1"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["data"] == [str(two_case_dataset)] * 2 and doc["test"] == str(two_case_dataset)
    (row,) = doc["results"]
    assert row["n_images"] == 10 and row["n_gt"] == 20 and row["recall@1fp"] == 1.0


@pytest.mark.slow
def test_detect2d_trains_on_two_processes(
    two_case_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["--data", str(two_case_dataset), "--detectors", "heatmap", "--minutes", "0.5"]
    # A config field and a training option replace the preset's in both processes.
    argv += ["--option", "heatmap.widths=[8,16]", "--option", "heatmap.max_iters=2"]
    assert main([*argv, "--procs", "2", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["procs"] == 2
    assert doc["options"] == {"heatmap.widths": [8, 16], "heatmap.max_iters": 2}
    (row,) = doc["results"]
    # Trained by two processes together; the model rank 0 wrote was loaded and scored.
    fit = json.loads((out / "heatmap" / "fit.json").read_text())
    assert fit["processes"] == 2.0 and fit["iterations"] == 2
    assert detectors2d.load(out / "heatmap" / "model.pt").config.widths == (8, 16)
    assert row["n_images"] == 5 and row["n_gt"] == 10


def test_detect2d_trains_for_a_number_of_steps(
    two_case_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data", str(two_case_dataset), "--detectors", "heatmap", "--iters", "3"]
    argv += ["--option", "heatmap.widths=[8,16]", "--out", str(tmp_path / "out")]
    assert main([*argv, "--no-progress", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    doc = json.loads(lines[-1])
    assert doc["iters"] == 3 and doc["minutes"] is None
    # No time limit: exactly the steps asked for, however long they take.
    (row,) = [json.loads(x.removeprefix("heatmap: ")) for x in lines if x.startswith("heatmap: ")]
    assert row["fit"]["iterations"] == 3
    assert row["n_images"] == 5 and row["n_gt"] == 10


def test_detect2d_takes_one_budget(
    two_case_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="expected minutes or iters, found neither"):
        run(["oracle"], two_case_dataset, None, tmp_path)
    argv = ["--data", str(two_case_dataset), "--detectors", "oracle"]
    with pytest.raises(SystemExit):
        main([*argv, "--iters", "100", "--minutes", "5"])
    assert "argument --minutes: not allowed with argument --iters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--iters", "0"])
    assert "--iters must be >= 1, found 0" in capsys.readouterr().err


def test_options_go_to_the_config_or_the_training_by_field() -> None:
    got = split_options({"heatmap.widths": [8, 16], "heatmap.lr": 1e-3, "yolo.model": "x.yaml"})
    assert got == {
        "heatmap": ({"widths": [8, 16]}, {"lr": 1e-3}),
        "yolo": ({"model": "x.yaml"}, {}),
    }
    # A field of both (inference views per pass, training crops per step) sets both.
    assert split_options({"yolo.batch_size": 4}) == {"yolo": ({"batch_size": 4}, {"batch_size": 4})}
    with pytest.raises(ValueError, match="'widht' is neither a heatmap config field"):
        split_options({"heatmap.widht": [8]})
    with pytest.raises(ValueError, match=r"expected NAME\.KEY with NAME one of"):
        split_options({"widths": [8]})
    with pytest.raises(ValueError, match="NAME one of"):
        split_options({"oracle.jitter_px": 1})  # not trained by the benchmark


def test_detect2d_rejects_a_misspelt_option(
    two_case_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["--data", str(two_case_dataset), "--option", "heatmap.widht=[8]"])
    assert "'widht' is neither a heatmap config field" in capsys.readouterr().err


def test_detect2d_rejects_zero_processes(
    two_case_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["--data", str(two_case_dataset), "--detectors", "oracle", "--procs", "0"])
    assert "--procs must be >= 1, found 0" in capsys.readouterr().err
