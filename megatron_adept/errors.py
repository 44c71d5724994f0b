"""The one exception type for bad user input.

Library code raises :class:`AdeptError` (or a subclass) with a message that names the bad
value; tools print it as one line and exit non-zero, with no traceback.
"""


class AdeptError(ValueError):
    """User-facing error: bad flag, path, file content or checkpoint."""


class ConfigError(AdeptError):
    """An inconsistent model or parallel configuration."""


class CheckpointError(AdeptError):
    """A missing, incomplete, corrupt or mismatched checkpoint."""


class DataError(AdeptError):
    """Malformed or empty input data."""


class TrainingError(AdeptError):
    """A run that cannot go on, such as one whose steps keep coming out NaN/Inf."""
