"""Errors a user can fix: each is a :class:`LooperError`, which the CLI prints as one line
(``error: <file:line or key>: <reason>``) and exits with status 2. Anything else is a bug and keeps its
traceback; ``--debug`` (or ``LOOPER_DEBUG=1``) shows the traceback of a LooperError too.

The modules that raise them re-export them under their old homes (``config.ConfigError``,
``runio.DataError``, ...), so ``from looper_math.runio import DataError`` keeps working.
"""

from __future__ import annotations


class LooperError(Exception):
    """A problem the user can fix (bad input, config, command line, model, existing output)."""


class UsageError(LooperError, ValueError):
    """A wrong command-line argument (``--shard``, ``--rounds``, ``--resume`` with ``--overwrite``, ...)."""


class ConfigError(LooperError, ValueError):
    """A config file or override is wrong; the message names the file or key."""


class DataError(LooperError, ValueError):
    """Bad input data; the message names the file and line."""


class ModelError(LooperError, RuntimeError):
    """A model or adapter cannot be loaded as configured; the message says what to fix."""


class OutputExistsError(LooperError, RuntimeError):
    """An output exists and neither --resume nor --overwrite was given."""


class StaleOutputError(OutputExistsError):
    """A finished output no longer matches the settings or inputs it would be reused with."""


class NonFiniteLossError(LooperError, RuntimeError):
    """Training produced a NaN/inf loss or gradient; nothing was saved from that step on."""
