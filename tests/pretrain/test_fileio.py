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


# --- links planted in an output folder, failed writes (issues 15 and 16) ---------------------------

def test_run_lock_refuses_a_symlink_and_leaves_its_target(tmp_path):
    """Fails on the issue-15 code: the lock emptied the target and wrote "pid N on HOST" into it."""
    from pretrain.fileio import OutputDirError, RunLock
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".run.lock").symlink_to(victim)
    with pytest.raises(OutputDirError, match=r"\.run\.lock is a symbolic link; refusing to write through it"):
        RunLock(tmp_path / "out").acquire()
    assert victim.read_text() == "precious\n"


def test_metrics_log_refuses_a_symlink_planted_before_or_during_the_run(tmp_path):
    """Fails on the issue-15 code: both appended to the link's target."""
    from pretrain.fileio import OutputDirError
    from pretrain.metrics_log import MetricsLog
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m.jsonl").symlink_to(victim)
    with pytest.raises(OutputDirError, match="m.jsonl is a symbolic link"):
        MetricsLog(tmp_path / "a", "m", tensorboard=False)
    log = MetricsLog(tmp_path / "b", "m", tensorboard=False)
    log.write({"epoch": 1, "loss": 1.0})
    log.path.unlink()
    log.path.symlink_to(victim)
    with pytest.raises(OutputDirError, match="m.jsonl is a symbolic link"):
        log.write({"epoch": 2, "loss": 0.5})
    assert victim.read_text() == "precious\n"


def test_a_save_that_hits_a_file_size_limit_raises_oserror_naming_the_file(tmp_path):
    """torch.save reports a failed write as "RuntimeError: ... unexpected pos"; atomic_write gives the
    OSError (EFBIG here, ENOSPC on a full disk) with the destination, and keeps the old file. Run in
    a child process so the limit cannot touch pytest's own files. Fails on the issue-16 code
    (the RuntimeError)."""
    import subprocess
    import sys
    script = f"""
import errno, resource, signal, torch
from pretrain.checkpoint import save_atomic
save_atomic({{"w": torch.zeros(10)}}, {str(tmp_path / "ckpt.pth")!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_atomic({{"w": torch.zeros(100_000)}}, {str(tmp_path / "ckpt.pth")!r})
except OSError as error:
    print(errno.errorcode[error.errno], error.filename, error.strerror)
"""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": repo})
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == f"EFBIG {tmp_path / 'ckpt.pth'} File too large"
    import torch
    assert torch.load(tmp_path / "ckpt.pth", weights_only=True)["w"].shape == (10,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]


def test_tensorboard_events_past_the_resumed_step_are_purged(tmp_path):
    """After a resume at step 2, TensorBoard must drop the killed run's steps 3-4 rather than show them
    twice: the reopened writer records a restart at step 3 (purge_step). Fails on the issue-16 code,
    which kept appending to the old events (no restart recorded)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from pretrain.metrics_log import MetricsLog
    first = MetricsLog(tmp_path, "m", step_key="step", tb_dir="tb")
    for step in (1, 2, 3, 4):
        first.write({"step": step, "loss": 10.0 + step})
    first.close()
    resumed = MetricsLog(tmp_path, "m", step_key="step", tb_dir="tb")
    resumed.truncate_after(2)
    for step in (3, 4):
        resumed.write({"step": step, "loss": float(step)})
    resumed.close()
    # For event files of version 2 (what SummaryWriter writes), the reader purges only at a recorded
    # restart, not at a step that goes backwards.
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 11.0), (2, 12.0), (3, 3.0), (4, 4.0)]
