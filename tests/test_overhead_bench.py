"""scripts/bench/overhead.py: it times exactly the steps it says, interleaved, and splits start-up."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import REPO, make_image_folder

sys.path.insert(0, str(REPO / "scripts" / "bench"))
import overhead  # noqa: E402


@pytest.fixture
def images(tmp_path):
    return make_image_folder(tmp_path / "data", {"train": 60})


def test_step_part_times_each_step_of_both_loops(images, tmp_path):
    out = tmp_path / "figures.json"
    overhead.main(["--images_dir", str(images), "--only", "step", "--steps", "6", "--warmup", "2", "--repeats", "2",
                   "--batch_size", "16", "--val_size", "20", "--json", str(out)])  # fmt: skip
    step = json.loads(out.read_text())["step"]
    assert [run["steps_timed"] for run in step["runs_ms"]] == [[6, 6], [6, 6]]
    assert all(run["fit"] > 0 and run["plain"] > 0 for run in step["runs_ms"])
    assert step["ratios"] == pytest.approx([run["fit"] / run["plain"] for run in step["runs_ms"]])
    assert step["batch_size"] == 16


@pytest.mark.slow
def test_startup_part_splits_each_run_into_launch_steps_and_exit(images, tmp_path):
    out = tmp_path / "figures.json"
    overhead.main(["--images_dir", str(images), "--only", "startup", "--startup_steps", "1", "--repeats", "1",
                   "--val_size", "20", "--json", str(out)])  # fmt: skip
    startup = json.loads(out.read_text())["startup"]
    for side in ("plain", "fit"):
        (run,) = startup["runs"][side]
        assert run["steps"] == 1  # the child stamped the one training step it was asked for
        parts = run["to_first_step_s"] + run["steps_s"] + run["after_last_step_s"]
        assert parts == pytest.approx(run["wall_s"], abs=1e-6) and min(parts, run["steps_s"]) > 0
    assert startup["fixed_ratio"] == pytest.approx(
        startup["median"]["fit"]["fixed_s"] / startup["median"]["plain"]["fixed_s"]
    )
