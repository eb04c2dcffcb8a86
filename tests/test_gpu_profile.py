"""scripts/bench/gpu_profile.py on a CPU: fit.py's run with the profiling callback, its tables, JSON and trace."""

from __future__ import annotations

import gzip
import json
from types import SimpleNamespace

import pytest
from helpers import load_bench_script, make_image_folder
from torch.autograd import DeviceType

TINY = (
    "--trainer.accelerator cpu --trainer.precision 32-true --trainer.max_epochs 1 --model.net.widths [8,16,16] "
    "--model.channels_last false --data.batch_size 4 --data.eval_batch_size 6 --data.val_size 6 "
    "--trainer.enable_progress_bar false --trainer.enable_model_summary false"
)


def load_profile():
    return load_bench_script("gpu_profile")


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return make_image_folder(tmp_path / "data", {"train": 12})  # 30 training images: 8 steps of 4


def test_profile_of_a_cpu_run_names_real_ops(data, tmp_path, capsys):
    files = {"json": tmp_path / "profile.json", "trace": tmp_path / "trace.json.gz"}
    argv = ["--images_dir", str(data), "--wait", "1", "--steps", "2", "--top", "8", "--extra", TINY,
            "--work_dir", str(tmp_path / "runs"), "--json", str(files["json"]),
            "--trace", str(files["trace"])]  # fmt: skip
    assert load_profile().main(argv) == 0
    report = json.loads(files["json"].read_text())
    names = [row["name"] for row in report["host"]]
    assert report["steps"] == 2 and report["step_ms"] > 0 and report["device_ops"] == []
    assert any(name.startswith("aten::convolution") for name in names), names  # the network's own work
    assert 0 < sum(row["share"] for row in report["host"]) <= 1.0001
    assert [row["self_ms"] for row in report["host"]] == sorted(
        (row["self_ms"] for row in report["host"]), reverse=True
    )
    trace = json.loads(gzip.decompress(files["trace"].read_bytes()))
    assert any(str(event.get("name", "")).startswith("aten::") for event in trace["traceEvents"])
    out = capsys.readouterr().out
    assert "2 training steps" in out and "host (CPU) op" in out and names[0] in out
    assert "device (CUDA) kernel: none recorded" in out


def test_a_run_too_short_for_the_profile_says_how_to_fix_it(data, tmp_path, capsys):
    argv = ["--images_dir", str(data), "--wait", "20", "--steps", "2", "--extra", TINY, "--work_dir",
            str(tmp_path / "runs"), "--json", str(tmp_path / "p.json"), "--trace", str(tmp_path / "t.gz")]  # fmt: skip
    assert load_profile().main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the run ended before step 23") and "lower --wait" in err
    assert not (tmp_path / "p.json").exists()


def event(key, device_type=DeviceType.CPU, self_us=0.0, total_us=0.0, count=1, annotation=False):
    return SimpleNamespace(key=key, device_type=device_type, count=count, is_user_annotation=annotation,
                           self_cpu_time_total=self_us, cpu_time_total=total_us,
                           self_device_time_total=self_us, device_time_total=total_us)  # fmt: skip


def test_device_table_counts_kernels_once_and_steps_merge():
    """What a CUDA run's averages hold: kernels and copies on the device, the same step ranges mirrored there."""
    profile = load_profile()
    averages = [
        event("ProfilerStep#11", self_us=300, total_us=4000),
        event("ProfilerStep#12", self_us=500, total_us=6000),
        event("aten::convolution", self_us=1000, total_us=3000, count=4),
        event("cudaLaunchKernel", self_us=200, total_us=200, count=40),
        event("[memory]", self_us=999),
        event("ProfilerStep#11", DeviceType.CUDA, self_us=9000, annotation=True),  # the step's span on the GPU
        event("sm90_xmma_fprop_kernel", DeviceType.CUDA, self_us=6000, count=8),
        event("Memcpy HtoD (Pageable -> Device)", DeviceType.CUDA, self_us=2000, count=2),
    ]
    callback = SimpleNamespace(averages=averages, device="cpu")
    report = profile.summarise(callback, top=10)
    assert report["steps"] == 2 and report["step_ms"] == pytest.approx(5.0)
    assert [r["name"] for r in report["host"]] == ["aten::convolution", "ProfilerStep*", "cudaLaunchKernel"]
    assert report["host"][1]["self_ms"] == pytest.approx(0.8) and report["host"][0]["share"] == pytest.approx(0.5)
    kernels = [(r["name"], r["calls"]) for r in report["device_ops"]]
    assert kernels == [("sm90_xmma_fprop_kernel", 8), ("Memcpy HtoD (Pageable -> Device)", 2)]
    assert report["device_ops"][0]["share"] == pytest.approx(0.75)
    assert report["device_busy_ms_per_step"] == pytest.approx(4.0)
    table = profile.render(report)
    assert "device busy 4.00 ms of it (80%)" in table and "sm90_xmma_fprop_kernel" in table
