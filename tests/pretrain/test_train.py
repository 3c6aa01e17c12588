"""The training loop end to end on a tiny real image tree: outputs, resume, and bad input."""
import hashlib
import json
import os
import signal
import socket

import pytest
import torch

from pretrain.__main__ import main
from pretrain.checkpoint import FORMAT, save_atomic
from pretrain.config import ConfigError
import pretrain.train as train_module
from pretrain.train import EpochSampler, local_batch_size

TINY = ["--recipe", "fmnist_resnet18_cpu", "--dataset", "imagefolder", "--train-limit", "none",
        "--batch-size", "16", "--candidate-set-size", "64", "--k", "4", "--proj-hidden-dim", "32", "--dim", "16",
        "--neighbor-warmup-epochs", "1", "--warmup-epochs", "1", "--workers", "0", "--log-every", "1",
        "--max-steps-per-epoch", "2"]


def run(tree, out, *extra):
    return main([*TINY, "--data-dir", str(tree), "--output-dir", str(out), *extra])


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_epoch_run(image_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert run(image_tree, out, "--epochs", "2") == 0
    return out


def test_outputs_and_checkpoint_contents(two_epoch_run):
    out = two_epoch_run
    assert {"config.yaml", "metrics.jsonl", "metrics.csv", "checkpoint.pth", "snclr_resnet18_ep2.pth"} <= \
        {p.name for p in out.iterdir()}
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert state["format"] == FORMAT and state["epoch"] == 2 and state["global_step"] == 4
    assert {"optimizer", "scaler", "rng", "config", "code_version"} <= set(state)
    assert state["epochs_history"] == [2]
    assert state["model"]["candidate_set.features"].shape == (64, 16)
    assert int(state["model"]["candidate_set.filled"]) == 4 * 16  # one push of the batch per step
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["neighbors_on"] for r in rows] == [0, 0, 1, 1]      # 1 warm-up epoch of Eq. 1
    assert rows[-1]["neighbor_rows"] == 1.0 and rows[0]["neighbor_rows"] == 0.0
    assert rows[0]["lr"] < rows[1]["lr"]                          # linear warm-up
    assert all(r["loss"] > 0 for r in rows)


def signal_during_step(monkeypatch, step, signum=signal.SIGTERM):
    """Send ``signum`` to this process while global step ``step`` (1-based) of this call is running.

    The lr schedule is called once per step, before the forward pass, so the signal lands mid-step."""
    calls = {"n": 0}
    original = train_module.warmup_cosine_lr

    def lr_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "warmup_cosine_lr", lr_then_signal)
    return original


def assert_same_training_state(path_a, path_b):
    """Weights, BN statistics, the candidate set, the optimizer state and the counters, bit for bit."""
    a, b = torch.load(path_a, weights_only=True), torch.load(path_b, weights_only=True)
    assert (a["epoch"], a["step_in_epoch"], a["global_step"]) == (b["epoch"], b["step_in_epoch"], b["global_step"])
    assert a["model"].keys() == b["model"].keys()
    differ = [key for key in a["model"] if not torch.equal(a["model"][key], b["model"][key])]
    assert not differ, f"{len(differ)} of {len(a['model'])} tensors differ, e.g. {differ[:3]}"
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for key in state_a[index]:
            assert torch.equal(state_a[index][key], state_b[index][key]), (index, key)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]   # includes the lr


@pytest.fixture(scope="module")
def epoch_one_run(image_tree, tmp_path_factory):
    """A 2-epoch run stopped by SIGTERM during the last step of epoch 1 (saved at the epoch's end)."""
    out = tmp_path_factory.mktemp("epoch_one")
    with pytest.MonkeyPatch.context() as monkeypatch:
        signal_during_step(monkeypatch, 2)
        assert run(image_tree, out, "--epochs", "2") == 0
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 2)
    assert not (out / "snclr_resnet18_ep2.pth").exists()
    return out


def test_sigterm_at_epoch_end_then_resume_equals_the_straight_run(image_tree, tmp_path, epoch_one_run,
                                                                  two_epoch_run):
    """Stopped after epoch 1's save, the rerun (auto-resume from the output dir) == 2 epochs straight."""
    (tmp_path / "checkpoint.pth").write_bytes((epoch_one_run / "checkpoint.pth").read_bytes())
    assert run(image_tree, tmp_path, "--epochs", "2") == 0
    assert_same_training_state(tmp_path / "checkpoint.pth", two_epoch_run / "checkpoint.pth")


def test_sampler_skips_the_steps_already_done(image_tree):
    dataset = list(range(40))
    full, resumed = EpochSampler(dataset, 1, 0, seed=0), EpochSampler(dataset, 1, 0, seed=0)
    full.set_epoch(3)
    resumed.set_epoch(3)
    resumed.skip = 8
    assert list(resumed) == list(full)[8:] and len(resumed) == 32


def test_batch_not_divisible_by_world_size():
    assert local_batch_size(256, 8) == 32
    with pytest.raises(ConfigError, match="batch_size=10 is not divisible by the world size 4"):
        local_batch_size(10, 4)


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_missing_data_dir(tmp_path, capsys):
    assert main([*TINY, "--data-dir", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o")]) == 2
    assert _error_line(capsys) == f"error: data directory {tmp_path / 'nope' / 'train'} does not exist"


def test_unknown_backbone_and_recipe(tmp_path, capsys):
    assert main([*TINY, "--backbone", "resnet5", "--output-dir", str(tmp_path)]) == 2
    assert "backbone='resnet5': expected one of" in _error_line(capsys)
    assert main(["--recipe", "nope", "--output-dir", str(tmp_path)]) == 2
    assert "unknown recipe 'nope'" in _error_line(capsys)


def test_k_larger_than_candidate_set(tmp_path, capsys):
    assert main([*TINY, "--k", "65", "--output-dir", str(tmp_path)]) == 2
    assert "k=65: expected at most candidate_set_size (64)" in _error_line(capsys)


@pytest.mark.parametrize("kind", ["corrupt", "foreign", "other-backbone"])
def test_bad_resume_checkpoint_is_refused_and_nothing_is_overwritten(image_tree, two_epoch_run, tmp_path,
                                                                     capsys, kind):
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "checkpoint.pth"
    existing.write_bytes((two_epoch_run / "checkpoint.pth").read_bytes())
    before = sha(existing)
    bad = tmp_path / "bad.pth"
    if kind == "corrupt":
        bad.write_bytes((two_epoch_run / "checkpoint.pth").read_bytes()[:5000])
        expected = "corrupt or unreadable checkpoint"
    elif kind == "foreign":
        import torchvision
        save_atomic(torchvision.models.resnet18().state_dict(), bad)
        expected = "not an snclr-bench pre-training checkpoint"
    else:
        state = torch.load(two_epoch_run / "checkpoint.pth", weights_only=True)
        state["config"]["backbone"] = "resnet50"
        save_atomic(state, bad)
        expected = "resuming would change the run's result (backbone 'resnet50' -> 'resnet18')"
    assert run(image_tree, out, "--epochs", "2", "--resume", str(bad)) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {bad}") and expected in line
    assert sha(existing) == before


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_mid_epoch_then_resume_equals_the_straight_run_bit_for_bit(image_tree, tmp_path, two_epoch_run,
                                                                         monkeypatch, capsys, workers):
    """Stopped by SIGTERM during step 1 of epoch 0, resumed (with ``workers`` DataLoader workers):
    weights, BN statistics, candidate set and optimizer state equal the straight run bit for bit.

    Fails on the previous code (the RNG state was saved after the interrupted batch's augmentations
    were drawn: 222 of 269 tensors differed), and on each of these mutations, tried one at a time:
    the sampler skip ignored (``sampler.skip = 0``), the lr position reset on resume
    (``progress = epoch + (step - first_step) / steps_per_epoch``), and per-sample augmentation
    seeding removed (``SeededAugmentation.__getitem__`` without ``manual_seed``)."""
    original = signal_during_step(monkeypatch, 1)
    assert run(image_tree, tmp_path, "--epochs", "2") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"stopped by SIGTERM at epoch 0 step 1 (global step 1); saved {tmp_path / 'checkpoint.pth'}; "
        "rerun the same command to resume")
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 1, 1)
    monkeypatch.setattr(train_module, "warmup_cosine_lr", original)
    assert run(image_tree, tmp_path, "--epochs", "2", "--workers", str(workers)) == 0
    assert_same_training_state(tmp_path / "checkpoint.pth", two_epoch_run / "checkpoint.pth")
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.fixture(scope="module", params=["device", "dali"])
def pipeline_run(request, image_tree, tmp_path_factory):
    """(output folder, pipeline) of a straight 2-epoch run with a batched pipeline (DALI on its CPU backend)."""
    out = tmp_path_factory.mktemp(f"{request.param}_run")
    assert run(image_tree, out, "--epochs", "2", "--data-pipeline", request.param) == 0
    return out, request.param


def test_the_resolved_pipeline_is_recorded(two_epoch_run, pipeline_run):
    """``auto`` on CPU with an image folder is the PIL path; config.yaml and checkpoints say so."""
    import yaml
    for out, name in ((two_epoch_run, "pil"), pipeline_run):
        assert yaml.safe_load((out / "config.yaml").read_text())["data_pipeline"] == name
        for checkpoint in ("checkpoint.pth", "snclr_resnet18_ep2.pth"):
            assert torch.load(out / checkpoint, weights_only=True)["config"]["data_pipeline"] == name


def test_sigterm_mid_epoch_then_resume_with_a_batched_pipeline_is_exact(image_tree, tmp_path, pipeline_run,
                                                                       monkeypatch):
    """As the PIL test above, with the device and the DALI pipelines. The rerun gives no
    --data-pipeline: ``auto`` keeps the checkpoint's pipeline.

    Fails when the device pipeline counts batches from where the (resumed) call starts instead of
    taking the sampler's images (mutation tried in ``DevicePipeline.epoch``:
    ``self.views(epoch, np.arange(start, start + self.batch_size))``)."""
    straight, name = pipeline_run
    original = signal_during_step(monkeypatch, 1)
    assert run(image_tree, tmp_path, "--epochs", "2", "--data-pipeline", name) == 0
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["step_in_epoch"] == 1
    monkeypatch.setattr(train_module, "warmup_cosine_lr", original)
    assert run(image_tree, tmp_path, "--epochs", "2") == 0
    assert_same_training_state(tmp_path / "checkpoint.pth", straight / "checkpoint.pth")


def test_the_pipelines_train_on_different_views(two_epoch_run, pipeline_run):
    """A batched run is not the PIL run relabelled (which would make the test above vacuous)."""
    pil = torch.load(two_epoch_run / "checkpoint.pth", weights_only=True)["model"]
    other = torch.load(pipeline_run[0] / "checkpoint.pth", weights_only=True)["model"]
    assert any(not torch.equal(pil[key], other[key]) for key in pil if pil[key].is_floating_point())


def test_sigint_during_a_save_completes_the_save(image_tree, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the epoch-1 checkpoint is being written: the save completes and the run stops.

    Fails on the previous code, where the KeyboardInterrupt cut torch's writer and lost the epoch."""
    import pretrain.checkpoint as ckpt
    original = ckpt.save_atomic

    def interrupted_save(obj, path):
        if not interrupted:
            interrupted.append(path)
            os.kill(os.getpid(), signal.SIGINT)
        return original(obj, path)

    interrupted = []

    monkeypatch.setattr(ckpt, "save_atomic", interrupted_save)
    assert run(image_tree, tmp_path, "--epochs", "2") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("stopped by SIGINT at epoch 1 step 0")
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["epoch"] == 1


def test_missing_final_checkpoint_is_written_on_a_resume_at_the_end(image_tree, tmp_path, two_epoch_run, capsys):
    """A kill between checkpoint.pth and snclr_*_ep2.pth: the rerun writes the final file it names.

    Fails on the previous code, which exited 0 naming a file that did not exist."""
    (tmp_path / "checkpoint.pth").write_bytes((two_epoch_run / "checkpoint.pth").read_bytes())
    assert run(image_tree, tmp_path, "--epochs", "2") == 0
    final = tmp_path / "snclr_resnet18_ep2.pth"
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"checkpoint: {final}"
    assert_same_training_state(final, two_epoch_run / "snclr_resnet18_ep2.pth")


@pytest.mark.parametrize("flags, change", [
    (["--neighbors", "binary"], "neighbors 'soft' -> 'binary'"),
    (["--k", "3"], "k 4 -> 3"),
    (["--loss-form", "official"], "loss_form 'paper' -> 'official'"),
    (["--base-lr", "0.6"], "base_lr 0.3 -> 0.6"),
    (["--seed", "1"], "seed 0 -> 1"),
    (["--epochs", "3"], "epochs 2 -> 3"),
    (["--epochs", "1", "--extend-schedule"], "epochs 2 -> 1"),
    (["--k", "3", "--seed", "2"], "k 4 -> 3, seed 0 -> 2"),
    (["--data-pipeline", "device"], "data_pipeline 'pil' -> 'device'"),
])
def test_resume_refuses_a_result_changing_flag(image_tree, tmp_path, two_epoch_run, capsys, flags, change):
    """Fails on the previous code, which compared only shape keys and relabelled the checkpoint."""
    existing = tmp_path / "checkpoint.pth"
    existing.write_bytes((two_epoch_run / "checkpoint.pth").read_bytes())
    before = sha(existing)
    epochs = [] if "--epochs" in flags else ["--epochs", "2"]
    assert run(image_tree, tmp_path, *epochs, *flags) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {existing}: resuming would change the run's result ({change});"), line
    assert sha(existing) == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]


def test_extend_schedule_grows_epochs_and_is_recorded(image_tree, tmp_path, two_epoch_run):
    (tmp_path / "checkpoint.pth").write_bytes((two_epoch_run / "checkpoint.pth").read_bytes())
    assert run(image_tree, tmp_path, "--epochs", "3", "--extend-schedule", "--workers", "0") == 0
    state = torch.load(tmp_path / "snclr_resnet18_ep3.pth", weights_only=True)
    assert (state["epoch"], state["global_step"], state["epochs_history"]) == (3, 6, [2, 3])
    assert state["config"]["epochs"] == 3


def test_a_second_run_in_the_same_folder_is_refused(image_tree, tmp_path, capsys):
    """Fails on the previous code, where two runs interleaved their metrics in one folder."""
    from pretrain.fileio import RunLock
    with RunLock(tmp_path):   # another live run holds the folder
        assert run(image_tree, tmp_path, "--epochs", "1") == 2
    line = _error_line(capsys)
    assert line == (f"error: {tmp_path} is in use by another run (pid {os.getpid()} on {socket.gethostname()}, "
                    f"lock {tmp_path / '.run.lock'}); wait for it to finish or choose another --output-dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock"]


def test_stale_temp_files_of_a_killed_save_are_removed(image_tree, tmp_path):
    """Fails on the previous code, which left a killed save's (at ResNet-50 scale, GB-sized) temp file."""
    stale = tmp_path / ".checkpoint.pth.k3j2x9.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = tmp_path / "notes.tmp"   # not one of atomic_write's names
    keep.write_text("mine")
    assert run(image_tree, tmp_path, "--epochs", "1") == 0
    assert not stale.exists() and keep.exists()


def test_a_diverged_run_never_writes_a_checkpoint(image_tree, tmp_path, capsys):
    """An lr of 1e30 makes the weights non-finite after the first step; SIGTERM during step 2 asks
    for a save, which the finite check refuses. Fails with the check removed from ``save``."""
    original = train_module.warmup_cosine_lr
    calls = {"n": 0}

    def huge_lr_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return 1e30

    train_module.warmup_cosine_lr = huge_lr_then_signal
    try:
        assert run(image_tree, tmp_path, "--epochs", "1", "--max-steps-per-epoch", "3", "--log-every", "100") == 3
    finally:
        train_module.warmup_cosine_lr = original
    line = _error_line(capsys)
    assert line.startswith("error: epoch 0 step 2: ") and "hold NaN or inf" in line, line
    assert not (tmp_path / "checkpoint.pth").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--save-every", "0", "save_every=0: expected a positive number of epochs"),
    ("--log-every", "0", "log_every=0: expected a positive number of steps"),
    ("--workers", "-1", "workers=-1: expected a non-negative integer"),
    ("--image-size", "0", "image_size=0: expected a positive integer"),
    ("--train-limit", "-5", "train_limit=-5: expected a positive number of images"),
    ("--epochs", "0", "epochs=0: expected a positive integer"),
    ("--data-pipeline", "gpu", "data_pipeline='gpu': expected one of auto, pil, device, dali"),
])
def test_bad_flags_give_one_line_and_write_nothing(image_tree, tmp_path, capsys, flag, value, message):
    """Fails on the previous code: tracebacks (log_every 0, image_size 0), silent runs (save_every 0,
    train_limit -5), and ``batch_size/epochs=16`` reported for a bad --epochs."""
    out = tmp_path / "out"
    assert run(image_tree, out, flag, value) == 2
    assert _error_line(capsys).startswith(f"error: {message}")
    assert not out.exists()


def test_unwritable_output_dir_gives_one_line(image_tree, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert run(image_tree, blocker / "out", "--epochs", "1") == 2
    assert _error_line(capsys).startswith(f"error: {blocker / 'out'}: cannot create the output folder (")


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_gives_one_line_naming_it(tmp_path, capsys, workers):
    """Also: the failed epoch's loader workers are gone when ``main`` returns. They ignore SIGTERM, so
    a worker left alive (its iterator kept by the exception's traceback) made the interpreter's exit
    wait for it forever: pytest hung after its summary line until the pipeline closed its epochs."""
    import multiprocessing
    from tests.conftest import write_image_tree
    tree = write_image_tree(tmp_path / "tree", per_class=4, size=16)
    bad = tree / "train" / "b" / "b_1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    before = set(multiprocessing.active_children())
    try:
        assert run(tree, tmp_path / "out", "--epochs", "1", "--workers", str(workers),
                   "--max-steps-per-epoch", "none") == 2
        left = sorted(child.pid for child in set(multiprocessing.active_children()) - before)
        assert left == [], "loader workers still alive after the run"
    finally:   # a failed check must not hang the suite: kill what is left, with torch's SIGCHLD hook off
        previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            for child in set(multiprocessing.active_children()) - before:
                child.kill()
                child.join()
        finally:
            signal.signal(signal.SIGCHLD, previous)
    line = _error_line(capsys)
    assert line.startswith(f"error: {bad}: cannot read image (UnidentifiedImageError"), line


def test_metrics_lines_of_redone_steps_are_dropped(image_tree, tmp_path, epoch_one_run, two_epoch_run):
    """Killed after epoch 2's log lines but before its save: the rerun redoes steps 3-4 and the log
    holds each step once. Fails with ``MetricsLog.truncate_after`` made a no-op (steps 1,2,3,4,3,4)."""
    (tmp_path / "checkpoint.pth").write_bytes((epoch_one_run / "checkpoint.pth").read_bytes())
    (tmp_path / "metrics.jsonl").write_text((two_epoch_run / "metrics.jsonl").read_text())
    assert run(image_tree, tmp_path, "--epochs", "2") == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows == [json.loads(line) | {"images_per_s": r["images_per_s"]} for line, r in
                    zip((two_epoch_run / "metrics.jsonl").read_text().splitlines(), rows)]


def test_truncate_after_drops_only_later_lines(tmp_path):
    from pretrain.metrics_log import MetricsLog
    log = MetricsLog(tmp_path, "m", step_key="step", tensorboard=False)
    for step in (1, 2, 3, 4):
        log.write({"step": step, "loss": float(step)})
    with open(log.path, "a") as handle:
        handle.write('{"step": 5, "lo')   # a line cut short by a crash
    log.truncate_after(2)
    assert [json.loads(line) for line in log.path.read_text().splitlines()] == \
        [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]


def test_device_pipeline_on_mixed_image_sizes_gives_one_line(tmp_path, capsys):
    """The device pipeline holds one array: a folder of unequal images is refused, naming a file."""
    from PIL import Image
    for split in ("train", "val"):
        for name, size in (("a", (32, 32)), ("b", (40, 32))):
            folder = tmp_path / "tree" / split / name
            folder.mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", size).save(folder / f"{i}.png")
    out = tmp_path / "out"
    assert run(tmp_path / "tree", out, "--data-pipeline", "device", "--batch-size", "8") == 2
    line = _error_line(capsys)
    assert "40x32 px, but the first image is 32x32" in line and line.startswith("error: "), line
    assert not out.exists()


# --- faults that used to lose work (issue 16 section 2) -----------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# `python -m pretrain` in a child process whose data loading is slowed to 0.1 s per image, so a
# signal sent after the first logged step lands while the DataLoader workers are busy.
SLOW_PRETRAIN = """
import sys, time
import pretrain.data as data
original = data.SeededAugmentation.__getitem__
def slow(self, index):
    time.sleep(0.1)
    return original(self, index)
data.SeededAugmentation.__getitem__ = slow
from pretrain.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _child_env():
    # The parent's thread settings: the child's steps are compared bit for bit with an in-process run.
    return {**os.environ, "PYTHONPATH": REPO}


def test_sigterm_to_the_process_group_with_workers_saves_and_resumes_bit_for_bit(image_tree, tmp_path,
                                                                                  two_epoch_run):
    """SIGTERM to every process of the job (os.killpg, as SLURM and systemd send it) with 2 DataLoader
    workers: the run saves and exits 0, and the rerun ends equal to the straight run. Fails on the
    issue-16 code: the workers died first and the main process ended with rc 1 and a traceback."""
    import subprocess
    import sys
    import time
    argv = [*TINY, "--data-dir", str(image_tree), "--output-dir", str(tmp_path), "--epochs", "2", "--workers", "2"]
    child = subprocess.Popen([sys.executable, "-c", SLOW_PRETRAIN, *argv], cwd=REPO, env=_child_env(),
                             start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (tmp_path / "metrics.jsonl").is_file() or not (tmp_path / "metrics.jsonl").read_text().strip():
        assert child.poll() is None and time.time() < deadline, child.communicate()
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGTERM)
    out, err = child.communicate(timeout=240)
    assert child.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1].startswith("stopped by SIGTERM at epoch "), out
    assert "Traceback" not in err
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert 1 <= state["global_step"] < 4   # stopped mid-run, not at its end
    assert run(image_tree, tmp_path, "--epochs", "2", "--workers", "2") == 0
    assert_same_training_state(tmp_path / "checkpoint.pth", two_epoch_run / "checkpoint.pth")


def test_a_full_disk_at_save_is_one_line_and_keeps_the_previous_checkpoint(image_tree, tmp_path, epoch_one_run):
    """The save of epoch 2 fails (RLIMIT_FSIZE of 1 MB in a child process: torch's writer reports
    "unexpected pos", as on a full disk). Fails on the issue-16 code: a RuntimeError traceback."""
    import resource
    import subprocess
    import sys
    (tmp_path / "checkpoint.pth").write_bytes((epoch_one_run / "checkpoint.pth").read_bytes())
    before = sha(tmp_path / "checkpoint.pth")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # write() then fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    argv = [*TINY, "--data-dir", str(image_tree), "--output-dir", str(tmp_path), "--epochs", "2"]
    child = subprocess.run([sys.executable, "-m", "pretrain", *argv], cwd=REPO, env=_child_env(),
                           preexec_fn=limit_file_size, capture_output=True, text=True, timeout=300)
    assert child.returncode == 2, child.stderr[-3000:]
    assert child.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path}: cannot write the checkpoint (File too large); checkpoint.pth holds epoch 1 step 0")
    assert sha(tmp_path / "checkpoint.pth") == before
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "snclr_resnet18_ep2.pth").exists()


def test_free_space_check_asks_for_one_new_checkpoint_when_resuming(image_tree, tmp_path, epoch_one_run,
                                                                     monkeypatch):
    """An atomic save needs the old file plus one new one. Fails on the issue-16 code, which asked for
    three checkpoints' worth on top of the one on disk (a run could not resume on the disk it began on)."""
    asked = []
    original = train_module.check_free_space
    monkeypatch.setattr(train_module, "check_free_space",
                        lambda folder, needed, what: (asked.append(needed), original(folder, needed, what))[1])
    assert run(image_tree, tmp_path / "fresh", "--epochs", "1") == 0
    (tmp_path / "resumed").mkdir()
    (tmp_path / "resumed" / "checkpoint.pth").write_bytes((epoch_one_run / "checkpoint.pth").read_bytes())
    assert run(image_tree, tmp_path / "resumed", "--epochs", "2") == 0
    size = (epoch_one_run / "checkpoint.pth").stat().st_size
    assert asked[1] == size                     # one new file beside the old one
    assert size < asked[0] / 2 < 1.2 * size     # a fresh run: twice an upper estimate of one file


@pytest.mark.parametrize("how", ["--resume", "rerun"])
def test_an_empty_checkpoint_is_one_line(image_tree, tmp_path, capsys, how):
    """Fails on the issue-16 code: an IndexError traceback (the EOFError has an empty message)."""
    empty = tmp_path / "checkpoint.pth"
    empty.write_bytes(b"")
    extra = ["--resume", str(empty)] if how == "--resume" else []
    assert run(image_tree, tmp_path / "out" if extra else tmp_path, "--epochs", "1", *extra) == 2
    assert _error_line(capsys) == (f"error: {empty}: empty file (0 bytes), not a checkpoint (a copy or save that "
                                   "never completed?)")
    assert empty.read_bytes() == b""


def test_a_directory_given_as_resume_checkpoint_is_named_so(image_tree, tmp_path, capsys):
    """Fails on the issue-16 code: "does not exist" for a folder that does."""
    assert run(image_tree, tmp_path / "out", "--epochs", "1", "--resume", str(tmp_path)) == 2
    assert _error_line(capsys) == f"error: checkpoint {tmp_path} is a directory, expected a file"


def test_a_second_sigterm_ends_in_one_line_naming_what_was_saved(image_tree, tmp_path, monkeypatch, capsys):
    """Two SIGTERMs in step 1 of epoch 1 (after epoch 0's save), the second after the duplicate
    window: the run ends at once, with exit status 143 and a line saying which checkpoint holds it.
    Fails on the issue-16 code: a KeyboardInterrupt traceback."""
    import time
    original = train_module.warmup_cosine_lr
    calls = {"n": 0}

    def lr_then_two_signals(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(train_module.StopRequest.DUPLICATE_S + 0.1)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "warmup_cosine_lr", lr_then_two_signals)
    assert run(image_tree, tmp_path, "--epochs", "2") == 128 + signal.SIGTERM
    assert _error_line(capsys) == (f"stopped: second SIGTERM: stopped without saving since the last save; "
                                   f"{tmp_path / 'checkpoint.pth'} holds epoch 1 step 0; rerun the same command "
                                   "to resume from it")
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["epoch"] == 1


def test_a_signal_repeated_within_milliseconds_is_one_request(image_tree, tmp_path, monkeypatch, capsys):
    """A process-group SIGTERM that a launcher also forwards (srun, submitit's local controller)
    arrives twice at once: the run still saves and stops. Fails without the duplicate window (the
    repeat read as insistence, and the run ended unsaved)."""
    original = train_module.warmup_cosine_lr
    calls = {"n": 0}

    def lr_then_a_repeated_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "warmup_cosine_lr", lr_then_a_repeated_signal)
    assert run(image_tree, tmp_path, "--epochs", "2") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("stopped by SIGTERM at epoch 0 step 1")
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["global_step"] == 1


def test_a_planted_lock_or_metrics_link_is_refused_and_its_target_untouched(image_tree, tmp_path, capsys):
    """Fails on the issue-15 code: the lock emptied the link's target and wrote "pid N on HOST" into it;
    metrics.jsonl appended through the link."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name in (".run.lock", "metrics.jsonl"):
        out = tmp_path / name.strip(".")
        out.mkdir()
        (out / name).symlink_to(victim)
        assert run(image_tree, out, "--epochs", "1") == 2
        assert _error_line(capsys) == (f"error: {out / name} is a symbolic link; refusing to write through it "
                                       "(remove the link or choose another output folder)")
        assert victim.read_text() == "precious\n"
        assert not (out / "checkpoint.pth").exists()


def test_resume_refusal_is_whole_and_trust_checkpoint_is_accepted(image_tree, two_epoch_run, tmp_path, capsys):
    """Before issue 15 `pretrain --resume` cut the refusal at 120 characters (the flag's name was lost) and
    had no --trust-checkpoint to pass."""
    import pathlib

    state = torch.load(two_epoch_run / "checkpoint.pth", weights_only=True)
    bad = tmp_path / ("a-long-folder-name-so-that-the-path-alone-takes-most-of-a-line-" * 2) / "checkpoint.pth"
    bad.parent.mkdir()
    torch.save({**state, "note": pathlib.PosixPath("/tmp")}, bad)
    out = tmp_path / "out"
    assert run(image_tree, out, "--epochs", "2", "--resume", str(bad)) == 2
    assert _error_line(capsys) == (
        f"error: {bad}: refused to load: it pickles {pathlib.PosixPath.__module__}.PosixPath, which is not a tensor "
        "or an allow-listed type and could run code; pass --trust-checkpoint only if you trust where the file came from")
    assert run(image_tree, out, "--epochs", "2", "--resume", str(bad), "--trust-checkpoint") == 0
    assert torch.load(out / "snclr_resnet18_ep2.pth", weights_only=True)["epoch"] == 2
