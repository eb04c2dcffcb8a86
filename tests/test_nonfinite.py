"""Never report a wrong number as a result: a diverged run stops, a checkpoint that scores NaN is refused."""

from __future__ import annotations

import pytest
import torch
from helpers import exit_status, make_image_folder, save_checkpoint

from lightning_modules.cli.fit import fit_main
from lightning_modules.cli.predict import predict_main

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY = ["--data.data_dir", "data", "--data.val_size", "6", "--data.batch_size", "6", "--test", "false", *QUIET]


@pytest.mark.parametrize("every", [1, 3])  # caught before validating epoch 1; or at its end, with no validation
def test_a_diverging_run_stops_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys, every):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 8})
    # Epoch 0 trains at lr 0.01; the schedule then multiplies it by 1e14 and the loss turns NaN in epoch 1.
    diverging = ["--optimizer.lr", "0.01", "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1",
                 "--lr_scheduler.gamma", "1e14", "--trainer.max_epochs", "3",
                 "--trainer.check_val_every_n_epoch", str(every)]  # fmt: skip
    status = exit_status(fit_main, [*TINY, *diverging])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1].startswith("error: the training loss became NaN or infinite at epoch 1"), err[-3:]
    assert "--optimizer.lr" in err[-1]
    folder = tmp_path / "runs" / "tutorial" / "version_0" / "checkpoints"
    for name in ("last.ckpt", "best.ckpt") if every == 1 else ("last.ckpt",):
        kept = torch.load(folder / name, weights_only=True)
        assert kept["epoch"] == 0, name  # not the diverged epoch
        assert all(t.isfinite().all() for t in kept["state_dict"].values() if t.is_floating_point()), name


def test_a_checkpoint_whose_std_buffer_is_zero_is_refused(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["std"] = torch.zeros_like(checkpoint["state_dict"]["std"])  # hparams stay valid
    torch.save(checkpoint, path)
    assert exit_status(predict_main, ["--ckpt_path", str(path), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "std buffer" in err[0] and "must be > 0" in err[0]


@pytest.mark.parametrize(
    "init_args, says",
    [
        ({"num_classes": 8_000_000}, "num_classes 8000000"),
        ({"num_classes": 10, "widths": [100_000, 64, 64]}, "width 100000"),
    ],
)
def test_a_checkpoint_asking_for_a_huge_network_is_refused_before_allocating(tmp_path, capsys, init_args, says):
    import resource

    path = save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["net"] = {"class_path": "lightning_modules.nets.AirbenchNet", "init_args": init_args}
    torch.save(checkpoint, path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert exit_status(predict_main, ["--ckpt_path", str(path), "x.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing large allocated


def test_fit_refuses_a_huge_network_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data", {"train": 4})
    args = [*TINY, "--model.net", "AirbenchNet", "--model.net.widths", "[64, 100000, 64]"]
    assert exit_status(fit_main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "width 100000" in err[-1]


class NaNOnBright(torch.nn.Module):
    """Scores NaN for images brighter than mid-grey and equal scores otherwise: a model that overflows on
    some inputs only (the load-time probe cannot see every image)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 3)
        logits[x.mean(dim=(1, 2, 3)) > 0.5] = float("nan")
        return logits


def test_an_image_scored_nan_fails_alone_in_predict_and_serve(tmp_path):

    from helpers import batcher_answers
    from PIL import Image

    from lightning_modules.inference.batcher import Batcher, RequestError
    from lightning_modules.inference.model import InferenceClassifier
    from lightning_modules.inference.predictor import NONFINITE, classify

    model = InferenceClassifier(NaNOnBright(), ["a", "b", "c"], image_size=8).to_device("cpu").eval()
    shades = [0, 255, 40]
    rows, blobs = [], []
    for i, shade in enumerate(shades):
        Image.new("RGB", (8, 8), (shade,) * 3).save(tmp_path / f"{i}.png")
        rows.append((f"{i}.png", tmp_path / f"{i}.png", None))
        blobs.append((tmp_path / f"{i}.png").read_bytes())

    records = list(classify(model, rows, 2, 8, torch.device("cpu"), lanes=1))
    assert [r["error"] for r in records] == [None, NONFINITE, None]
    assert records[1]["label"] is None and records[1]["probability"] is None and records[1]["top_k"] == []
    assert records[0]["probability"] == pytest.approx(1 / 3, abs=1e-6)
    assert list(records[0]) == ["path", "label", "probability", "top_k", "error"]  # predict's column order

    answers = batcher_answers(Batcher(model), blobs)
    assert isinstance(answers[1], RequestError) and answers[1].status == 500 and "NaN" in str(answers[1])
    assert answers[0]["probability"] == pytest.approx(1 / 3, abs=1e-6) and isinstance(answers[2], dict)
