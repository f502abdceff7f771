"""User-facing errors.

A `CionError` is a problem with the user's input or environment (a missing
file, a bad argument, an unreadable video). The CLI prints its message and
exits with status 2, without a traceback; library callers can catch it.
"""


class CionError(Exception):
    """Bad input or environment; the message names the input and the problem."""


class ConfigError(CionError):
    """A configuration value is invalid or unknown."""
