"""Errors the CLI reports as one clear line (exit code 2) instead of a traceback."""

from finegrain.config import ConfigError
from finegrain.data.problems import DataError


class MissingPackageError(ImportError):
    """An optional or embedded package is not installed; the message holds the command that installs it."""


class TrainingError(RuntimeError):
    """Training stopped on a condition it cannot go on from (NaN/inf reward or loss); state was saved."""


class StageFailed(RuntimeError):
    """A stage run in a worker process failed; the message names the stage and the log holding its traceback."""


UserError = (ConfigError, DataError, MissingPackageError, TrainingError, StageFailed, FileNotFoundError)
