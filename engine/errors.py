"""Errors the engine raises for input a user can fix."""


class InputError(ValueError):
    """Bad input from a user: a missing file, an unknown writer, a digit out of range.

    The message names the value and what to do about it. The command-line interface
    prints it as one line and exits with status 2; the app shows it with `st.error`.
    """
