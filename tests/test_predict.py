"""scripts/predict.py: many inputs, bad inputs, output files, exit status."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import class_image, png_with_header_only, run_script
from PIL import Image

from lightning_modules.cli.predict import predict_main


@pytest.fixture
def corpus(tmp_path):
    """Good images and hostile inputs side by side; returns the arguments and how many are good."""
    import numpy as np

    rng = np.random.default_rng(0)
    good = tmp_path / "good"
    good.mkdir()
    for i in range(5):
        Image.fromarray(class_image(rng, i)).save(good / f"{i}.png")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zero.png").write_bytes(b"")
    (bad / "text.png").write_text("not an image")
    png_with_header_only(bad / "bomb.png", 100_000, 100_000)
    Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(tmp_path / "transparent.png")
    (tmp_path / "empty").mkdir()
    args = [str(good), str(bad), str(tmp_path / "transparent.png"), str(tmp_path / "empty"), "missing.jpg"]
    return args, 6, 5  # inputs: 5 good + transparent = 6 classified; 3 bad files + empty + missing = 5 failed


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_predict_classifies_the_good_and_reports_the_bad(checkpoint, corpus, tmp_path, capsys, suffix):
    args, n_good, n_bad = corpus
    output = tmp_path / "out" / f"preds{suffix}"
    status = predict_main(["--ckpt_path", str(checkpoint), *args, "--top_k", "2", "--output", str(output)])
    assert status == 1  # some inputs failed; the others are still classified and written
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert f"{n_good} classified, {n_bad} failed" in captured.err
    if suffix == ".json":
        records = json.loads(output.read_text())
    else:
        records = list(csv.DictReader(output.open()))
        for r in records:
            r["top_k"] = json.loads(r["top_k"])
            r["error"] = r["error"] or None
    assert len(records) == n_good + n_bad
    assert [r["path"] for r in records][:5] == [str(tmp_path / "good" / f"{i}.png") for i in range(5)]
    for r in records:
        if r["error"] is None:
            assert r["label"] in ("cat", "dog", "ship") and len(r["top_k"]) == 2
            assert r["top_k"][0]["label"] == r["label"]
            assert float(r["top_k"][0]["probability"]) >= float(r["top_k"][1]["probability"])
        else:
            assert r["label"] in (None, "") and r["top_k"] == []
    errors = [r["error"] for r in records if r["error"]]
    assert any("empty file" in e for e in errors) and any("not an image" in e for e in errors)
    assert any("too large" in e for e in errors) and any("folder holds no images" in e for e in errors)
    assert any("missing.jpg: no such file" in e for e in errors)
    assert not list(output.parent.glob(".*.tmp"))  # the temporary file was renamed into place


def test_printed_rows_follow_input_order(checkpoint, tmp_path, capsys):
    for name in ("b", "a", "c"):
        Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / f"{name}.png")
    paths = [str(tmp_path / f"{n}.png") for n in ("c", "a", "b")]
    assert predict_main(["--ckpt_path", str(checkpoint), *paths, "--batch_size", "2"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert [row.split("\t")[0] for row in rows] == paths
    # Batching does not change the answer: all three are the same image.
    assert len({row.split("\t", 1)[1] for row in rows}) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ckpt_path", "nope.ckpt", "x.png"], "no checkpoint at nope.ckpt"),
        (["--ckpt_path", "{ckpt}"], "no inputs"),
        (["--ckpt_path", "{ckpt}", "x.png", "--output", "preds.txt"], "must end in .json or .csv"),
        (["--ckpt_path", "{ckpt}", "x.png", "--top_k", "0"], "not a positive integer"),
    ],
)
def test_usage_errors_exit_2_with_one_line(checkpoint, capsys, argv, message):
    argv = [a.format(ckpt=checkpoint) for a in argv]
    assert predict_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_top_k_larger_than_the_classes_is_capped(checkpoint, tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert predict_main(["--ckpt_path", str(checkpoint), str(tmp_path / "x.png"), "--top_k", "9", "--output",
                         str(tmp_path / "p.json")]) == 0  # fmt: skip
    (record,) = json.loads((tmp_path / "p.json").read_text())
    assert len(record["top_k"]) == 3
    assert sum(t["probability"] for t in record["top_k"]) == pytest.approx(1, abs=1e-4)


@pytest.mark.slow
def test_script_runs_as_a_process(checkpoint, tmp_path):
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    result = run_script(
        "predict.py", "--ckpt_path", str(checkpoint), "red.png", "broken.jpg", "--trainer.accelerator", "cpu",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.splitlines()[0].split("\t")[0] == "red.png"
    assert "broken.jpg\tERROR" in result.stdout


def test_a_file_name_with_a_line_break_stays_on_its_own_row(checkpoint, tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    for name in ("plain.png", "two\nlines.png", "tab\there.png"):
        Image.new("RGB", (32, 32), (200, 40, 40)).save(folder / name)
    assert predict_main(["--ckpt_path", str(checkpoint), str(folder)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 3 and all(len(row.split("\t")) == 3 for row in rows)
    assert any("two\\nlines.png" in row for row in rows) and any("tab\\there.png" in row for row in rows)
