"""The evaluators' user-error types, in one module; each is a :class:`UserError`.

Each says "bad input": its message names the file, key or flag and what was expected; the entry
points' one wrapper (:func:`pretrain.errors.cli_main`) turns it into the ``error:`` line. Anything
else raised while evaluating is a bug and keeps its traceback. Importing only ``pretrain.errors``,
every evaluator module can raise and catch them without an import circle.
"""
from __future__ import annotations

from pretrain.errors import UserError

__all__ = ["UserError", "BackboneLoadError", "EvalError", "ResumeError", "TrainingSettingsError",
           "ProtocolCheckError", "SubsetFileError", "RecordError", "ConversionError", "DetectionError"]


class BackboneLoadError(UserError, ValueError):
    """A checkpoint that does not hold a usable backbone; the message says what was wrong."""


class EvalError(UserError, ValueError):
    """Bad input to an evaluator; the message names the flag or file and what was expected."""


class ResumeError(UserError, ValueError):
    """A resume state that belongs to another run; the message names the file and the difference."""


class TrainingSettingsError(UserError, ValueError):
    """Settings a training run cannot use (e.g. a global batch smaller than the number of ranks)."""


class ProtocolCheckError(UserError, RuntimeError):
    """A MoCo-style sanity check failed: the probe would not measure the loaded backbone."""


class SubsetFileError(UserError, ValueError):
    """A label-subset file that cannot be used; the message names the file and the problem."""


class RecordError(UserError, ValueError):
    """A result record that is malformed; the message names file and line."""


class ConversionError(UserError, ValueError):
    """A checkpoint that cannot be converted, or a conversion that detectron2 does not load back."""


class DetectionError(UserError, ValueError):
    """Bad input to a detection run; the message names the file, flag or config key."""
