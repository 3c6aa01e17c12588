"""The exception types that evaluator CLIs turn into one-line errors, in one module.

Each says "bad input": its message names the file, key or flag and what was expected. Anything else
raised while evaluating is a bug and keeps its traceback. Living here, they import nothing, so every
evaluator module can raise and catch them without an import circle.
"""
from __future__ import annotations


class BackboneLoadError(ValueError):
    """A checkpoint that does not hold a usable backbone; the message says what was wrong."""


class EvalError(ValueError):
    """Bad input to an evaluator; the message names the flag or file and what was expected."""


class ResumeError(ValueError):
    """A resume state that belongs to another run; the message names the file and the difference."""


class TrainingSettingsError(ValueError):
    """Settings a training run cannot use (e.g. a global batch smaller than the number of ranks)."""


class ProtocolCheckError(RuntimeError):
    """A MoCo-style sanity check failed: the probe would not measure the loaded backbone."""


class SubsetFileError(ValueError):
    """A label-subset file that cannot be used; the message names the file and the problem."""


class RecordError(ValueError):
    """A result record that is malformed; the message names file and line."""


class ConversionError(ValueError):
    """A checkpoint that cannot be converted, or a conversion that detectron2 does not load back."""


class DetectionError(ValueError):
    """Bad input to a detection run; the message names the file, flag or config key."""
