"""Errors a user can fix from the command line: recipes print the message, not a traceback."""


class RecipeError(ValueError):
    """A bad input or setting; the message says what to change."""
