"""Property: whatever a command line holds, predict, export, serve, compare, sweep and evaluate end
with exit status 0, 1 or 2, and 2 is exactly one stderr line ``error: ...``; never an uncaught
exception or a traceback.

Hypothesis draws, for every option each command's parser declares (read from ``parser._actions``,
so a new option is covered without editing this file), values of the right type and of wrong
ones, and runs the command's main in this process (fit.py is left out: a run takes seconds). Paths
are drawn from files made here: a tiny valid checkpoint, missing files, folders, non-image files,
broken reports. Nothing reaches the network (``--data.download true`` is not drawn) and no server
starts (serve.py's ``run`` closes the socket and returns); sweep's trials are a quick stand-in for fit.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import traceback
from pathlib import Path

import pytest
import yaml
from helpers import make_image_folder, save_checkpoint
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lightning_modules.cli import compare, evaluate, export, predict, serve, sweep

pytestmark = pytest.mark.slow
SETTINGS = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Paths relative to the working folder the ``work`` fixture makes: what each option is given.
PATHS = [
    "m.ckpt", "missing.ckpt", "imgs", "imgs/test/cat/0000.png", "notes.txt", "empty", "runs/a", "run_ok",
    "run_list", "run_bad", "space.yaml", "bad_space.yaml", "data", "out.json", "out.csv", "out.png", "out.onnx",
    "out.pt", "sub/out.json", ".", "..", "/", "/dev/null", "imgs/*.png", "imgs/**/*.png", "bad\udcff.png",
    "line\nbreak.png",
]  # fmt: skip
GOOD = {  # by option (its dest; "prog dest" first): values that let a command get somewhere
    "ckpt_path": ["m.ckpt"],
    "paths": ["imgs", "imgs/test/cat/0000.png", "imgs/**/*.png", "missing.png", "notes.txt"],
    "images": ["imgs", "imgs/test/cat/0000.png"],
    "run_dirs": ["run_ok"],
    "space": ["space.yaml"],
    "config": ["cfg.yaml"],
    "storage": ["sqlite:///study.db"],
    "name": ["study_a", "study_b"],
    "output_dir": ["outdir_a", "outdir_b"],
    "data.data_dir": ["imgs"],
    "data.cache_dir": ["cache"],
    "data": ["{data_dir: imgs}"],
    "accelerator": ["auto", "cpu"],  # the others are refused on a machine without them
    "predict.py output": ["out.json", "out.csv", "sub/out.json"],
    "export.py output": ["out.onnx", "out.pt", "sub/out.pt"],
    "compare.py output": ["out.png", "sub/out.png"],
}
WRONG_WORDS = [
    "", "-1", "0", "nan", "inf", "-inf", "1e400", "1.5", "0x10", "true", "none", "null", "[1]", "{a: 1}", "--", "-",
    " ", "é", "99999999999999999999",
]  # fmt: skip
# Any text a command line can hold: no NUL (argv cannot carry it), no lone surrogates but the
# file names' undecodable bytes in PATHS.
WRONG = st.one_of(
    st.sampled_from(WRONG_WORDS),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)


def number_strategy(kind: type, small: bool, clean: bool) -> st.SearchStrategy[str]:
    """Numbers as text: in a clean command line positive ones, else any, 0, negative, nan, inf."""
    if kind is int:
        return st.integers(1 if clean else -3, 4 if small else 2**40).map(str)
    finite = st.floats(0.001 if clean else -1e3, 0.3 if small else 1e3)
    return (finite if clean else st.one_of(finite, st.sampled_from([0.0, float("nan"), float("inf")]))).map(str)


def right_values(action: argparse.Action, option: str, clean: bool, prog: str) -> st.SearchStrategy[str]:
    """Values of the type the option takes (as text), from what the parser says about it; in a
    clean command line the ones that get somewhere, else also missing, wrong or hostile paths."""
    good = GOOD.get(f"{prog} {action.dest}") or GOOD.get(action.dest)
    if good and clean:
        return st.sampled_from(good)
    if action.choices:
        return st.sampled_from([str(c) for c in action.choices])
    name = getattr(action.type, "__name__", "")
    hint = str(getattr(action, "_typehint", ""))
    # Counts and seconds of a sweep stay small: a right value must also end soon.
    small = option in ("--n_trials", "--seeds", "--timeout")
    if name in ("positive_int", "port_number", "int") or "int" in hint:
        return number_strategy(int, small, clean)
    if "float" in name or "float" in hint:
        return number_strategy(float, small, clean)
    if "bool" in hint:
        return st.sampled_from(["false"] if option == "--data.download" else ["true", "false"])
    return st.sampled_from((good or []) + PATHS)


def command_line(parser: argparse.ArgumentParser) -> st.SearchStrategy[list[str]]:
    """Each option the parser declares, present or not, with a right value or, in half the command
    lines, also wrong ones (or none): a command line of right values only gets past the parser."""
    return st.booleans().flatmap(lambda clean: options(parser, clean))


def options(parser: argparse.ArgumentParser, clean: bool) -> st.SearchStrategy[list[str]]:
    parts = []
    required = getattr(parser, "required_args", set())  # jsonargparse keeps them here
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or type(action).__name__ == "_ActionPrintConfig":
            continue
        option = max(action.option_strings, key=len) if action.option_strings else None
        right = right_values(action, option or "", clean, parser.prog)
        values = right if clean else st.one_of(right, WRONG)
        if option == "--data.download":  # never a download
            values = values.filter(lambda v: v.strip().lower() not in ("true", "yes", "on", "1", "y"))
        if action.nargs in ("*", "+"):
            value = st.lists(values, min_size=1 if clean else 0, max_size=3)
        elif action.nargs == 0:
            value = st.just([])
        else:
            value = values.map(lambda v: [v])
            if not clean:
                value = st.one_of(value, st.just([]))  # []: the option left without a value
        flag = [option] if option else []
        # A required option or argument is there in every clean command line, most of the others.
        needed = action.required or action.dest in required
        present = st.just(True) if needed and clean else st.integers(0, 9).map(lambda i, n=needed: i < (9 if n else 5))
        parts.append(st.tuples(present, value).map(lambda t, f=flag: f + t[1] if t[0] else []))
    # In any order: options and positionals shuffled, each option with its value.
    shuffled = st.tuples(*parts).flatmap(lambda groups: st.permutations(list(groups)))
    return shuffled.map(lambda groups: [a for g in groups for a in g])


PARSERS = {
    "predict": predict.build_parser,
    "sweep": sweep.build_parser,
    "evaluate": evaluate.build_parser,
    "compare": compare.build_parser,
    "export": export.build_parser,
    "serve": serve.build_parser,
}
MAINS = {
    "predict": predict.predict_main, "sweep": sweep.sweep_main, "evaluate": evaluate.evaluate_main,
    "compare": compare.compare_main, "export": export.export_main, "serve": serve.serve_main,
}  # fmt: skip


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tmp_path / "m.ckpt")
    make_image_folder(tmp_path / "imgs", {"test": 2, "train": 2}, size=8)
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "empty").mkdir()
    report = {"config": {}, "epochs": [{"epoch": 0, "val/acc": 0.5, "wall_s": 1.0}], "wall_time_s": 2.0,
              "best_val_acc": 0.5, "test": {"test/acc": 0.4}}  # fmt: skip
    odd = {"config": [], "epochs": [1, {"val/acc": "x", "wall_s": None}], "wall_time_s": "2 s", "test": 3}
    for name, content in (
        ("run_ok", json.dumps(report)), ("run_list", "[1, 2]"), ("run_bad", "{not json"), ("run_odd", json.dumps(odd)),
    ):  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(content)
    (tmp_path / "space.yaml").write_text("optimizer.init_args.lr: {type: categorical, choices: [0.01, 0.02]}\n")
    (tmp_path / "cfg.yaml").write_text("trainer: {max_epochs: 1}\n")
    (tmp_path / "bad_space.yaml").write_text("optimizer.init_args.lr: {type: float, low: 1, high: 0}\n")
    monkeypatch.setattr(serve, "run", lambda app, listening: listening.close())  # no server starts
    monkeypatch.setattr("lightning_modules.cli.fit.fit", quick_fit)  # sweep's trials: no training
    return tmp_path


def quick_fit(args, callbacks=(), resume_hint=True) -> dict:
    """A stand-in for fit.py's fit: writes what the sweep reads back (config.yaml) and returns at once."""
    options = dict(zip(args[::2], args[1::2], strict=False))
    run_dir = Path(*(options[f"--trainer.logger.init_args.{k}"] for k in ("save_dir", "name", "version")))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"trainer": {}}))
    return {"best_val_acc": 0.5, "test": None, "run_dir": str(run_dir)}


def outcome(main, argv: list[str]) -> tuple[int, str]:
    """The exit status and stderr of a main called in this process; an uncaught exception fails."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = main(argv)
        except SystemExit as exit_:  # --help, or an argparse exit the frame did not turn into one line
            status = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            pytest.fail(f"{argv!r} raised:\n{traceback.format_exc()}\nstderr:\n{err.getvalue()[-2000:]}")
    return status, err.getvalue()


# Memory one command line may add to this process's peak: a value that asks for gigabytes (a
# network, an image, a batch) must be refused before it is allocated.
PEAK_GROWTH_KIB = 1 << 20  # 1 GiB


def check(name: str, argv: list[str]) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status, err = outcome(MAINS[name], argv)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < PEAK_GROWTH_KIB, f"{argv!r}: the peak memory grew by {grown / 2**20:.1f} GiB"
    event(f"exit status {status}")  # pytest --hypothesis-show-statistics: how many got past the parser
    assert status in (0, 1, 2), f"{argv!r}: exit status {status}\n{err[-2000:]}"
    assert "Traceback" not in err, f"{argv!r}:\n{err[-3000:]}"
    if status == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{argv!r}:\n{err[-2000:]}"


def property_of(name: str):
    @SETTINGS
    @given(data=st.data())
    def test(work, data):
        check(name, data.draw(command_line(PARSERS[name]()), label="argv"))

    test.__name__ = f"test_{name}_ends_in_0_1_or_2_with_one_error_line"
    return test


test_predict = property_of("predict")
test_export = property_of("export")
test_serve = property_of("serve")
test_compare = property_of("compare")
test_sweep = property_of("sweep")
test_evaluate = property_of("evaluate")


def test_every_parser_option_is_drawn():
    """The strategy covers every option (a parser with none found would test nothing)."""
    for name, make in PARSERS.items():
        options = [a for a in make()._actions if not isinstance(a, argparse._HelpAction)]
        assert len(options) >= 2, name
