"""User-facing errors.

Every error a user can cause (a missing file, a malformed row, an unknown task, a
checkpoint that does not fit the config, a NaN loss) is raised as a subclass of
`RomeError` whose message is one line naming the file, row or key. The command
line tools print that line alone (no traceback unless `--verbose`) and exit with
a non-zero status.
"""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (for one-line reports), or ""."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else ""


class RomeError(Exception):
    """Base class of the errors the command line reports as one line."""

    exit_code = 2


class ConfigError(RomeError):
    """An unknown config key or an impossible value."""


class DataError(RomeError):
    """Missing data files, malformed rows, unknown tasks or splits."""


class CheckpointError(RomeError):
    """Missing weights, or weights that do not fit the config."""


class TrainingError(RomeError):
    """A NaN or infinite loss, or another failure of the training loop."""

    exit_code = 3
