"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable


def exit_status(main: Callable[[list[str]], int | None], args: list[str]) -> int:
    """A command's exit status, called in-process: its return value, or the code of a SystemExit
    (argument parsers exit on their own)."""
    try:
        return main(args) or 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
