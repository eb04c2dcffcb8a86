"""scripts/benchmark.py: the tutorial-style baseline sees the same pixels, and a tiny run writes its figures."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import REPO, make_image_folder, run_script


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "bench" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    result = run_script(
        "bench/train_speed.py", "--data_dir", "data", "--only", "throughput,overhead", "--steps", "2", "--warmup", "1",
        "--repeats", "1", "--val_size", "20", "--json", "out.json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "out.json").read_text())
    assert set(figures["throughput"]) == {"tutorial_loop", "fit_path", "fit_path_channels_last", "network_alone"}
    assert "(ceiling: no data path)" in result.stdout
    assert figures["throughput"]["tutorial_loop"]["vs_tutorial"] == 1.0
    assert figures["overhead"]["time_ratio_fit_vs_plain"] > 0
    assert "overhead: fit path / plain loop" in result.stdout
    bad = run_script("bench/train_speed.py", "--data_dir", "data", "--only", "speed", cwd=tmp_path)
    assert bad.returncode == 2 and "choose from throughput, overhead, time_to_accuracy, seeds" in bad.stderr
    bad = run_script("bench/train_speed.py", "--data_dir", "data", "--only", "overhead", cwd=tmp_path)  # val_size 5000
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: val_size must be")
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_overhead_parts_run_a_fast_recipe(tmp_path, monkeypatch, precision):
    # The GPU comparison (fast.yaml against a plain loop of it) in miniature: fast_cpu.yaml's
    # augmentation (alternating flip, progressive sizes) and, on request, mixed precision.
    benchmark = load_benchmark()
    make_image_folder(tmp_path / "data", {"train": 10})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("sys.argv", ["benchmark.py"])
    recipe = str(REPO / "configs" / "fast_cpu.yaml")
    extra = ["--data.val_size", "6", "--data.batch_size", "8", "--trainer.precision", precision]
    for run in (benchmark.plain_loop_same_path, benchmark.fit_path):
        assert run("data", extra, tmp_path, 1, 2, "cpu", recipe) > 0


@pytest.mark.slow
def test_seeds_part_runs_the_user_path_per_seed_and_predict_agrees(tmp_path):
    make_image_folder(tmp_path / "data", {"train": 12, "test": 4})
    short = tmp_path / "short.yaml"
    short.write_text("trainer:\n  max_epochs: 1\n  enable_model_summary: false\ndata:\n  batch_size: 8\n")
    result = run_script(
        "bench/train_speed.py", "--data_dir", "data", "--only", "seeds", "--seeds", "2", "--steps", "2",
        "--val_size", "6", "--recipe", f"{REPO / 'configs' / 'tutorial.yaml'},{short}",
        "--predict_dir", str(tmp_path / "data" / "test"), "--json", "out.json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "out.json").read_text())["seeds"]
    assert [r["seed"] for r in figures["runs"]] == [0, 1]
    for run in figures["runs"]:
        assert run["predict_acc"] == pytest.approx(run["test_acc"])  # the user's path scores what the fit tested
        assert run["te"] > 0 and run["wall_s"] > 0
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
    benchmark = load_benchmark()
    (tmp_path / "runs" / "seed_1" / "fast_cpu").mkdir(parents=True)
    with pytest.raises(SystemExit, match="holds an earlier run; give --runs_dir an empty or new folder"):
        benchmark.seed_runs("data", ["r.yaml"], 2, [], tmp_path / "tmp", None, runs_dir=str(tmp_path / "runs"))
