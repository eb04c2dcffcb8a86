"""predict.py and serve.py run an exported .onnx file under ONNX Runtime: the same answers as the
checkpoint it came from, its metadata range-checked, and every misuse refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_modules.cli.export import export_main
from lightning_modules.cli.predict import predict_main
from lightning_modules.inference.checkpoints import CheckpointError, load_classifier
from tests.helpers import batcher_answers, exit_status, make_image_folder, save_checkpoint

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    work = tmp_path_factory.mktemp("onnx")
    ckpt = save_checkpoint(work / "model.ckpt")
    make_image_folder(work / "data", {"test": 6}, suffix=".jpg")
    assert export_main(["--ckpt_path", str(ckpt), "--format", "onnx", "--tta", "mirror"]) == 0
    return work, ckpt, work / "model.onnx"


def predictions(ckpt, folder, out, *options) -> list[dict]:
    assert predict_main(["--ckpt_path", str(ckpt), str(folder), "--top_k", "3", "--output", str(out), *options]) == 0
    return json.loads(out.read_text())


def test_predict_with_the_onnx_file_answers_as_the_checkpoint_did(exported, tmp_path):
    work, ckpt, onnx_file = exported
    ours = predictions(ckpt, work / "data", tmp_path / "ckpt.json", "--tta", "mirror")
    onnx = predictions(onnx_file, work / "data", tmp_path / "onnx.json")
    assert len(ours) == len(onnx) == 18
    for a, b in zip(ours, onnx, strict=True):
        assert a["path"] == b["path"] and [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
    # The graph holds the checkpoint's TTA: without it the answers differ, so the check above means something.
    plain = predictions(ckpt, work / "data", tmp_path / "plain.json", "--tta", "none")
    assert any(abs(a["probability"] - b["probability"]) > 1e-4 for a, b in zip(plain, onnx, strict=True))


def test_serve_runs_the_onnx_file_with_the_same_answers(exported):
    from lightning_modules.inference.batcher import Batcher

    work, ckpt, onnx_file = exported
    images = [f.read_bytes() for f in sorted((work / "data").rglob("*.jpg"))[:4]]
    answers = []
    for path in (onnx_file, ckpt):
        model = load_classifier(path, map_location="cpu", tta=None if path == onnx_file else "mirror", onnx=True)
        answers.append(batcher_answers(Batcher(model, top_k=2, max_batch_size=4), images))
    assert [a["label"] for a in answers[0]] == [a["label"] for a in answers[1]]
    assert [a["probability"] for a in answers[0]] == pytest.approx([a["probability"] for a in answers[1]], abs=1e-5)


def test_a_tta_other_than_the_graphs_is_refused_in_one_line(exported, capsys):
    work, _, onnx_file = exported
    assert exit_status(predict_main, ["--ckpt_path", str(onnx_file), str(work / "data"), "--tta", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has TTA 'mirror' inside its graph" in err and "--tta none" in err


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"class_names": json.dumps(["a", "a", "b"])}, "duplicates"),
        ({"class_names": "not json"}, "metadata lacks"),
        ({"image_size": "100000"}, "image_size 100000"),
        ({"tta": "spin"}, "metadata lacks"),
    ],
)
def test_metadata_is_range_checked_before_use(exported, tmp_path, change, reason):
    import onnx

    _, _, onnx_file = exported
    proto = onnx.load(str(onnx_file))
    for prop in proto.metadata_props:
        if prop.key in change:
            prop.value = change[prop.key]
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(CheckpointError, match=reason):
        load_classifier(bad, onnx=True)


def test_junk_named_onnx_and_onnx_files_where_a_checkpoint_is_needed_are_one_line(exported, tmp_path, capsys):
    _, _, onnx_file = exported
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(CheckpointError, match="pass a file written by scripts/export.py"):
        load_classifier(junk, onnx=True)
    with pytest.raises(CheckpointError, match="for predict.py and serve.py"):
        load_classifier(onnx_file)  # export, evaluate: the checkpoint is needed
    with pytest.raises(CheckpointError, match="run on the CPU"):
        load_classifier(onnx_file, map_location=torch.device("meta"), onnx=True)
    assert exit_status(export_main, ["--ckpt_path", str(onnx_file), "--format", "torchscript"]) == 2
    assert "for predict.py and serve.py" in capsys.readouterr().err


def test_the_onnx_model_runs_with_torchs_thread_count_as_predicts_lanes_set_it(exported):
    from lightning_modules.inference.onnx_model import OnnxClassifier

    model = OnnxClassifier(exported[2])
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    default, threads = model(images), torch.get_num_threads()
    torch.set_num_threads(1)  # as a lane of predict on 2 cores runs
    try:
        one = model(images)
    finally:
        torch.set_num_threads(threads)
    assert model._sessions[1].get_session_options().intra_op_num_threads == 1
    assert model._sessions[torch.get_num_threads()] is model.session
    torch.testing.assert_close(one, default, rtol=1e-5, atol=1e-5)
