"""Errors a user can fix from the command line: recipes print the message, not a traceback."""

import sys
from pathlib import Path
from typing import Any, Callable

from alt_text_recipes.data.paths import file_in_the_way


class RecipeError(ValueError):
    """A bad input or setting; the message says what to change."""


class DatasetError(RecipeError):
    """A data set that cannot be used as given; the message says what to change."""


def require_setting(ok: bool, flag: str, value: Any, expected: str) -> None:
    """A setting's range, checked where it is parsed: out of range, the run stops before anything loads (and
    not later, in a library's traceback or, worse, silently, as with a negative learning rate)."""
    if not ok:
        raise RecipeError(f"--{flag} {value}: {expected}.")


def require_folder(flag: str, value: str | Path | None, folder: str | Path | None = None) -> None:
    """An output folder (`value`, or the `folder` that will hold it) that cannot be made because a file is in the
    way: said before anything runs."""
    if value is None:  # the caller's default applies
        return
    blocker = file_in_the_way(value if folder is None else folder)
    require_setting(blocker is None, flag, value, f"{blocker} is a file; give a folder")


def first_line(error: BaseException, with_type: bool = False) -> str:
    """A library's error in a few words, for a one-line message: its first line (or its type, when it has none)."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return f"{type(error).__name__}: {text.splitlines()[0]}" if with_type else text.splitlines()[0]


def exit_on_user_error(entry_point: Callable[..., Any], *args: Any) -> Any:
    """Run a command-line entry point; a `RecipeError` ends it with one readable line and exit code 1."""
    try:
        return entry_point(*args)
    except RecipeError as error:
        sys.exit(f"error: {error}")
