"""Errors that end a command with one clear line (the CLI prints them without a traceback)."""


class LrmeshError(ValueError):
    """Base class: bad input, a checkpoint that does not fit, a config that does not parse."""

    reported_elsewhere = False  # set on the other processes of a multi-device run: process 0 prints the error


class InputError(LrmeshError):
    """Input views that cannot be used: wrong count, size, or an unreadable file."""


class ConfigError(LrmeshError):
    """A configuration file or override that does not fit the typed config."""
