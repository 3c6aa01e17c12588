import os
import stat

import pytest

from pretrain.fileio import atomic_write, atomic_write_text


def test_replaces_whole_file_with_normal_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "sub" / "a.txt", "new")
    finally:
        os.umask(mask)
    assert path.read_text() == "new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644     # not mkstemp's 0600


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    def crash(stream):
        stream.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
