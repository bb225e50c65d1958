"""Exceptions that reach the user. Every error vclip raises on bad input is a ``VclipError``
whose message names the file/field and what is wrong; the CLI prints it without a traceback."""

import functools


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


class TrainingError(VclipError):
    """Training cannot go on: a non-finite loss or gradient norm (beyond ``train.max_nonfinite_skips``)."""


class TrainingInterrupted(VclipError):
    """SIGINT or SIGTERM stopped a training run after it saved a checkpoint. ``exit_code`` is the
    shell's code for the signal (130 for SIGINT, 143 for SIGTERM); ``resume_command`` continues
    the run."""

    def __init__(self, message: str, *, signum: int, exit_code: int, resume_command: str, checkpoint: str):
        super().__init__(message)
        self.signum, self.exit_code = signum, exit_code
        self.resume_command, self.checkpoint = resume_command, checkpoint

    def __reduce__(self):
        """Picklable (the keyword-only fields), so that it crosses process boundaries: a parallel
        suite's worker sends it back to the main process."""
        fields = dict(signum=self.signum, exit_code=self.exit_code, resume_command=self.resume_command,
                      checkpoint=self.checkpoint)
        return (functools.partial(TrainingInterrupted, **fields), self.args[:1])
