"""Errors the CLI reports as one clear line (exit code 2) instead of a traceback."""

from finegrain.config import ConfigError
from finegrain.data.problems import DataError


class MissingPackageError(ImportError):
    """An optional or embedded package is not installed; the message holds the command that installs it."""


class TrainingError(RuntimeError):
    """Training stopped on a condition it cannot go on from (NaN/inf reward or loss); state was saved."""


UserError = (ConfigError, DataError, MissingPackageError, TrainingError, FileNotFoundError)
