"""Errors a user can fix from the command line: recipes print the message, not a traceback."""

import sys
from typing import Any, Callable


class RecipeError(ValueError):
    """A bad input or setting; the message says what to change."""


class DatasetError(RecipeError):
    """A data set that cannot be used as given; the message says what to change."""


def exit_on_user_error(entry_point: Callable[..., Any], *args: Any) -> Any:
    """Run a command-line entry point; a `RecipeError` ends it with one readable line and exit code 1."""
    try:
        return entry_point(*args)
    except RecipeError as error:
        sys.exit(f"error: {error}")
