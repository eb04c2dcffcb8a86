"""scripts/bench/train_speed.py and scripts/bench/common.py: the tutorial-style baseline sees the same
pixels, a tiny run of each part writes its figures; the shared options, seed runner and server helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import REPO, load_bench_script, make_image_folder, run_script


def load_benchmark():
    return load_bench_script("train_speed")


def test_tutorial_style_dataset_is_totensor_of_the_same_images():
    benchmark = load_benchmark()
    images = torch.randint(0, 256, (3, 3, 5, 4), dtype=torch.uint8)
    dataset = benchmark.TutorialStyleCIFAR10(images, torch.tensor([2, 0, 1]))
    for i in range(3):
        tensor, label = dataset[i]
        assert tensor.dtype == torch.float32 and tensor.shape == (3, 5, 4)
        assert torch.allclose(tensor, images[i].float() / 255) and label == [2, 0, 1][i]


@pytest.mark.slow
def test_benchmark_runs_and_writes_json(tmp_path):
    make_image_folder(tmp_path / "data", {"train": 60})
    short = tmp_path / "short.yaml"
    short.write_text("trainer:\n  max_epochs: 2\n  enable_model_summary: false\ndata:\n  batch_size: 16\n")
    result = run_script(
        "bench/train_speed.py", "--images_dir", "data", "--only", "throughput,time_to_accuracy", "--steps", "2",
        "--warmup", "1", "--repeats", "1", "--val_size", "20", "--target", "0", "--json", "out.json",
        "--recipe", f"{REPO / 'configs' / 'tutorial.yaml'},{short}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "out.json").read_text())
    assert set(figures["throughput"]) == {"tutorial_loop", "fit_path", "fit_path_channels_last", "network_alone"}
    assert "(ceiling: no data path)" in result.stdout
    assert figures["throughput"]["tutorial_loop"]["vs_tutorial"] == 1.0
    reached = figures["time_to_accuracy"]  # read from what fit() returned, not from its printed lines
    assert [row["epoch"] for row in reached["history"]] == [0, 1]
    assert 0 < reached["history"][0]["s"] == reached["seconds_to_target"] < reached["history"][1]["s"]
    assert (
        reached["history"][1]["s"] <= reached["total_s"]
        and reached["final_val_acc"] == reached["history"][1]["val_acc"]
    )
    assert "time to 0%: tutorial.yaml + short.yaml" in result.stdout


def test_benchmark_refuses_bad_parts_and_sizes_in_one_line(tmp_path, capsys):
    from lightning_modules.cli.frame import expected_errors

    make_image_folder(tmp_path / "data", {"train": 4})
    benchmark = load_benchmark()
    for part, says in (("speed", "choose from throughput, time_to_accuracy, seeds"),
                       ("overhead", "scripts/bench/overhead.py")):  # fmt: skip  # the part moved there
        with pytest.raises(SystemExit) as exit_info:
            benchmark.parse_args(["--images_dir", str(tmp_path / "data"), "--only", part])
        assert exit_info.value.code == 2 and says in capsys.readouterr().err
    # The script prints such errors as one "error: ..." line and exits 1 (its __main__ block).
    with pytest.raises(expected_errors(), match="^val_size must be"):
        benchmark.main(["--images_dir", str(tmp_path / "data"), "--only", "throughput", "--json", str(tmp_path / "o")])


def test_images_dir_defaults_to_data_dir_and_says_so_when_missing(monkeypatch, capsys):
    benchmark = load_benchmark()
    monkeypatch.delenv("DATA_DIR", raising=False)
    with pytest.raises(SystemExit) as stopped:
        benchmark.parse_args(["--only", "throughput"])
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # one line, naming both ways
    assert line.endswith(": error: no images: give --images_dir DIR or set DATA_DIR")
    assert benchmark.parse_args(["--data_dir", "old"]).images_dir == "old"  # the old name still works
    monkeypatch.setenv("DATA_DIR", "from_env")
    assert benchmark.parse_args([]).images_dir == "from_env"
    assert benchmark.parse_args(["--images_dir", "given"]).images_dir == "given"


@pytest.mark.slow
def test_seeds_part_runs_the_sweep_seed_runner_and_predict_agrees(tmp_path):
    make_image_folder(tmp_path / "data", {"train": 12, "test": 4})
    short = tmp_path / "short.yaml"
    short.write_text("trainer:\n  max_epochs: 1\n  enable_model_summary: false\ndata:\n  batch_size: 8\n")
    result = run_script(
        "bench/train_speed.py", "--images_dir", "data", "--only", "seeds", "--seeds", "2", "--steps", "2",
        "--val_size", "6", "--recipe", f"{REPO / 'configs' / 'tutorial.yaml'},{short}",
        "--predict_dir", str(tmp_path / "data" / "test"), "--runs_dir", "runs", "--json", "out.json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "out.json").read_text())["seeds"]
    assert [r["seed"] for r in figures["runs"]] == [0, 1]
    for run in figures["runs"]:
        assert run["predict_acc"] == pytest.approx(run["test_acc"])  # predict scores what the fit tested
        assert run["te"] > 0 and run["wall_s"] > 0
        assert (tmp_path / "runs").resolve() in Path(run["run_dir"]).parents  # sweep's trial folders, kept
    assert "val/acc (%)" in result.stdout and " ± " in result.stdout and "TE" in result.stdout


def test_test_pass_folder_holds_the_validation_images_twice(tmp_path):
    from datamodules import CIFAR10DataModule

    benchmark = load_benchmark()
    make_image_folder(tmp_path / "data", {"train": 12}, seed=3)
    made = benchmark.val_as_test(str(tmp_path / "data"), 7, tmp_path / "work")

    def split(data_dir: str, name: str):
        data = CIFAR10DataModule(data_dir=data_dir, download=False, val_size=7, cache_dir=str(tmp_path / "cache"))
        data.prepare_data()
        data.setup("fit" if name == "val" else "test")
        return getattr(data, f"{name}_split")

    def pairs(s) -> list:
        return sorted((bytes(image.numpy()), int(label)) for image, label in zip(s.images, s.labels, strict=True))

    val, test = split(str(tmp_path / "data"), "val"), split(made, "test")
    assert len(test.labels) == 14
    assert pairs(test) == sorted(pairs(val) * 2)  # the same images and labels, each twice
    with pytest.raises(SystemExit, match="drop --test_pass: data with its own test/ split"):
        benchmark.val_as_test(made, 7, tmp_path / "again")


def test_kept_runs_never_mix_with_an_earlier_run(tmp_path):
    load_benchmark()  # puts the repository on sys.path, as every bench script does
    from scripts.bench.common import seed_runs

    (tmp_path / "runs" / "trials" / "trial_000").mkdir(parents=True)
    with pytest.raises(SystemExit, match="holds an earlier run; give an empty or new folder"):
        seed_runs("data", ["r.yaml"], 2, [], tmp_path / "runs")


@pytest.mark.slow
def test_a_server_that_exits_is_reported_with_its_log(tmp_path):
    load_benchmark()
    from scripts.bench.common import ServerError, serving

    log = tmp_path / "server.log"
    with pytest.raises(ServerError, match=r"did not start \(exited with 2\): .*no_such\.ckpt"):
        with serving(tmp_path / "no_such.ckpt", "--trainer.accelerator", "cpu", log=log, timeout_s=60):
            pass
