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


def test_run_lock_refuses_a_second_holder_and_is_released(tmp_path):
    from pretrain.fileio import OutputDirError, RunLock
    with RunLock(tmp_path):
        with pytest.raises(OutputDirError, match=r"is in use by another run \(pid \d+ on "):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):   # released on exit: the folder is free again
        pass


def test_run_lock_is_released_when_its_holder_dies(tmp_path):
    """flock dies with its process: a SIGKILLed run leaves no stale lock."""
    import subprocess
    import sys

    from pretrain.fileio import RunLock
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pretrain.fileio import RunLock; "
                               f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OSError, match="in use by another run"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    RunLock(tmp_path).acquire().release()


def test_stale_temp_files_are_atomic_writes_leftovers_only(tmp_path):
    from pretrain.fileio import remove_stale_temp_files
    for name in (".checkpoint.pth.abc.tmp", ".metrics.jsonl.x1.tmp", "keep.tmp", "checkpoint.pth", ".hidden"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [".checkpoint.pth.abc.tmp", ".metrics.jsonl.x1.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "checkpoint.pth", "keep.tmp"]


def test_free_space_check_names_the_folder_and_the_sizes(tmp_path):
    """A full disk is simulated by asking for more than any disk holds (a petabyte)."""
    import shutil

    from pretrain.fileio import OutputDirError, check_free_space
    check_free_space(tmp_path, 1, "saving checkpoints")
    free_mb = shutil.disk_usage(tmp_path).free / 1e6
    with pytest.raises(OutputDirError, match=rf"^{tmp_path}: \d+\.\d MB free, but saving checkpoints needs about "
                                             r"1000000000\.0 MB; free space or choose another --output-dir$"):
        check_free_space(tmp_path, 10**15, "saving checkpoints")
    assert free_mb < 1e9
