"""Exceptions that reach the user. Every error vclip raises on bad input is a ``VclipError``
whose message names the file/field and what is wrong; the CLI prints it without a traceback."""


class VclipError(Exception):
    """Base class of user-facing errors."""


class CheckpointError(VclipError):
    """A weight file cannot be read or does not fit the model."""


class DownloadError(VclipError):
    """A pretrained file could not be fetched or verified."""


class VideoDecodeError(VclipError):
    """A video file cannot be opened or decoded."""


class AnnotationError(VclipError):
    """An annotation / split / label file is malformed."""


class ConfigError(VclipError):
    """A config key or value is invalid."""


class EvaluationError(VclipError):
    """Evaluation results are inconsistent: videos missing, or reported twice with different scores."""
