"""pretrain/errors.py: what the one wrapper of every entry point prints, returns and lets through."""
from __future__ import annotations

import errno

import pytest

from pretrain.errors import EXIT_USER_ERROR, ArgumentParser, UsageError, UserError, cli_main, error_line


def _raising(error: BaseException):
    @cli_main
    def main(argv=None) -> int:
        raise error
    return main


def test_a_user_error_is_one_line_on_stderr_and_exit_status_2(capsys):
    assert _raising(UserError("--flag 3: expected\nat most 2"))() == EXIT_USER_ERROR == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --flag 3: expected | at most 2\n" and captured.out == ""


def test_an_os_error_names_its_path(capsys):
    assert _raising(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y.pth"))() == 2
    assert capsys.readouterr().err == "error: /x/y.pth: No such file or directory\n"


def test_an_error_from_a_dataloader_worker_keeps_its_own_message():
    wrapped = UserError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1\npretrain.data.DataError: /d/img.png: unreadable image")
    assert error_line(wrapped) == "/d/img.png: unreadable image"


def test_a_class_can_set_its_own_exit_status(capsys):
    from pretrain.checkpoint import NonFiniteError

    assert _raising(NonFiniteError("weights hold NaN"))() == 3
    assert capsys.readouterr().err == "error: weights hold NaN\n"


@pytest.mark.parametrize("error", [RuntimeError("our bug"), KeyError("k"), KeyboardInterrupt()])
def test_bugs_and_interrupts_are_not_turned_into_a_line(error, capsys):
    """Break tried: ``except Exception`` in cli_main; this test fails."""
    with pytest.raises(type(error)):
        _raising(error)()
    assert capsys.readouterr().err == ""


def test_a_bad_flag_is_a_usage_error_not_argparse_usage_text():
    parser = ArgumentParser(prog="python -m tool")
    parser.add_argument("--n", type=int)
    with pytest.raises(UsageError, match=r"^python -m tool: argument --n: invalid int value: 'x' \(see "):
        parser.parse_args(["--n", "x"])


def test_every_user_facing_error_class_is_a_user_error_and_keeps_its_builtin_base():
    from evaluate import errors
    from evaluate.detection.d2_compat import Detectron2Unavailable
    from evaluate.report.facts import ReferenceFileError
    from evaluate.report.figures import FigureInputError
    from pretrain.backbones import UnknownBackboneError
    from pretrain.checkpoint import CheckpointError, NonFiniteError
    from pretrain.config import ConfigError
    from pretrain.data import DataError
    from pretrain.fileio import OutputDirError
    from pretrain.safe_load import UntrustedFileError

    classes = {ConfigError: ValueError, OutputDirError: OSError, UntrustedFileError: ValueError,
               DataError: ValueError, CheckpointError: ValueError, NonFiniteError: FloatingPointError,
               UnknownBackboneError: ValueError, FigureInputError: ValueError, ReferenceFileError: ValueError,
               Detectron2Unavailable: ImportError, errors.ProtocolCheckError: RuntimeError,
               **{getattr(errors, name): ValueError for name in ("BackboneLoadError", "EvalError", "ResumeError",
                                                                 "TrainingSettingsError", "SubsetFileError",
                                                                 "RecordError", "ConversionError", "DetectionError")}}
    # Issue 16 counts 20 classes; the 20th, safe_load's _RefusedGlobal, never leaves safe_load (it is
    # turned into UntrustedFileError there), so it is no user-facing error.
    assert len(classes) == 19 and errors.UserError is UserError
    for cls, builtin in classes.items():
        assert issubclass(cls, UserError) and issubclass(cls, builtin), cls
