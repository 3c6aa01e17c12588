"""What the classification CLIs put in a record (deviations, provenance, schedule), what they refuse to
resume, and how environment failures end: one line naming the path, a non-zero exit, no record.

The runs use the raw-pixel baseline (``--checkpoint identity``) on a tiny ImageFolder tree, so each
CLI call takes well under a second in-process.
"""
from __future__ import annotations

import contextlib
import io
import subprocess

import pytest
import torch

from classification_fixtures import write_split_tree
from evaluate.__main__ import main as evaluate_main
from evaluate.classification.cli_common import RawPixels
from evaluate.loading import load_backbone_state_dict, pretrain_schedule
from evaluate.report.records import read_records, working_tree_version
from pretrain.backbones import build_backbone

FAST = ["--num-workers", "0", "--no-tensorboard", "--image-size", "8"]


@pytest.fixture
def data(tmp_path):
    return write_split_tree(tmp_path / "data", classes=3, train_per_class=6, val_per_class=3)


def run(subcommand: str, data, out, *args: str) -> None:
    evaluate_main([subcommand, "--dataset", "imagefolder", "--data-dir", str(data), "--out-dir", str(out),
                   *FAST, *args])


def refused(subcommand: str, data, out, *args: str) -> str:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_info:
        run(subcommand, data, out, *args)
    (message,) = [line for line in stderr.getvalue().splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2 and "Traceback" not in stderr.getvalue(), stderr.getvalue()
    return message


# --- the raw-pixel baseline ---------------------------------------------------------------------

def test_raw_pixel_knn_and_fast_linear_probe_write_records(data, tmp_path):
    """``--checkpoint identity`` did not exist before issue 8 (it was read as a checkpoint path)."""
    run("knn", data, tmp_path / "knn", "--checkpoint", "identity", "--k", "3")
    run("linear-fast", data, tmp_path / "lin", "--checkpoint", "identity", "--epochs", "2", "--batch-size", "6")
    [knn] = read_records(tmp_path / "knn" / "results.jsonl")
    [linear] = read_records(tmp_path / "lin" / "results.jsonl")
    for record in (knn, linear):
        assert (record.method, record.backbone, record.checkpoint_path) == ("raw-pixels", "raw-pixels", "identity")
    # Solid noisy colours per class: raw pixels separate them, so the number is far above chance.
    assert knn.metrics_final["knn_top1_k3"] > 90.0


def test_records_carry_the_model_identity_of_what_they_evaluated(data, tmp_path):
    """Random init of one architecture is one model whose seeds pick the weights: two seeds share a
    model_id and carry their pre-training seed; raw pixels are a model of their own."""
    for seed in (0, 1):
        run("knn", data, tmp_path / f"r{seed}", "--checkpoint", "random", "--arch", "resnet18", "--k", "3",
            "--seed", str(seed))
    run("knn", data, tmp_path / "raw", "--checkpoint", "identity", "--k", "3")
    (first,), (second,), (raw,) = (read_records(tmp_path / name / "results.jsonl") for name in ("r0", "r1", "raw"))
    assert first.model_id == second.model_id and first.model_id.startswith("random-init:")
    assert first.checkpoint_sha256 != second.checkpoint_sha256  # two checkpoints: two seeds of one cell
    assert (first.pretrain_seed, second.pretrain_seed) == (0, 1)
    assert first.pretrain_config == {"method": "random-init", "backbone": "resnet18", "seed": 0}
    assert raw.model_id.startswith("raw-pixels:") and raw.pretrain_seed is None


def test_raw_pixel_features_are_the_flattened_normalised_crop():
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(RawPixels()(images), images.reshape(2, 192))


def test_raw_pixels_take_no_arch(data, tmp_path):
    assert "drop --arch" in refused("knn", data, tmp_path / "run", "--checkpoint", "identity", "--arch", "resnet18")


# --- deviations -------------------------------------------------------------------------------

def test_limits_and_a_non_dino_interpolation_are_deviations(data, tmp_path):
    """Fails on the pre-issue-8 code: --limit-train/--limit-val sat only in settings, kNN resized bilinearly."""
    run("knn", data, tmp_path / "dino", "--checkpoint", "identity", "--k", "2")
    run("knn", data, tmp_path / "other", "--checkpoint", "identity", "--k", "2", "--limit-train", "6",
        "--limit-val", "3", "--interpolation", "bilinear")
    [dino] = read_records(tmp_path / "dino" / "results.jsonl")
    [other] = read_records(tmp_path / "other" / "results.jsonl")
    assert dino.settings["interpolation"] == "bicubic"
    assert not any(d.startswith(("--limit", "interpolation")) for d in dino.deviations)
    assert "--limit-train: 6 class-balanced images (protocol: the whole training set)" in other.deviations
    assert "--limit-val: 3 class-balanced images (protocol: the whole validation set)" in other.deviations
    assert "interpolation: bicubic (DINO eval_knn.py) -> bilinear (flag)" in other.deviations
    assert not other.protocol_conformant


def test_knn_features_are_taken_with_a_bicubic_resize(data, tmp_path):
    """The cached features' key spells out the transform: DINO's bicubic Resize, then the centre crop."""
    run("knn", data, tmp_path / "run", "--checkpoint", "identity", "--k", "2")
    keys = [torch.load(path, weights_only=True)["key"] for path in (tmp_path / "run" / "feature_cache").glob("*.pt")]
    assert len(keys) == 2 and all("Resize(size=9, interpolation=bicubic" in key["transform"] for key in keys)  # 8 / 0.875
    assert all(key["versions"].startswith("code=") and "torch=" in key["versions"] for key in keys)


def test_temperature_must_be_positive(data, tmp_path):
    """Fails on the pre-issue-8 code: T = 0 divided by zero and T < 0 ranked the farthest neighbours first."""
    for value in ("0", "-0.07"):
        message = refused("knn", data, tmp_path / "run", "--checkpoint", "identity", "--temperature", value)
        assert "--temperature must be > 0" in message
    assert not (tmp_path / "run" / "results.jsonl").exists()


# --- provenance and the pre-training schedule ----------------------------------------------------

def test_record_carries_library_versions_argv_and_code_version(data, tmp_path):
    """Fails on the pre-issue-8 code, whose records had no provenance."""
    run("knn", data, tmp_path / "run", "--checkpoint", "identity", "--k", "2", "--seed", "5")
    [record] = read_records(tmp_path / "run" / "results.jsonl")
    provenance = record.provenance
    assert provenance["libraries"]["torch"] == torch.__version__.split("+")[0]
    assert set(provenance["libraries"]) == {"torch", "torchvision", "timm", "detectron2"}
    assert provenance["argv"][0] == "python -m evaluate knn" and "--seed" in provenance["argv"]
    assert provenance["resolved_args"]["seed"] == 5
    assert provenance["code_version"] == record.code_version and record.code_version
    assert provenance["pretrain_code_version"] is None  # the raw-pixel baseline was never pre-trained


def test_code_version_counts_untracked_files_as_dirty(tmp_path):
    """Fails on pretrain.provenance.code_version, which looks at tracked files only."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    clean = working_tree_version(tmp_path)
    assert clean and not clean.endswith("+dirty")
    (tmp_path / "new_module.py").write_text("y = 2\n")
    assert working_tree_version(tmp_path) == clean + "+dirty"


def snclr_checkpoint(path, *, epoch: int, planned: int, step_in_epoch: int = 0):
    state = {f"backbone.{k}": v for k, v in build_backbone("resnet18")[0].state_dict().items()}
    torch.save({"format": "snclr-bench/pretrain/v1", "model": state, "optimizer": {}, "epoch": epoch,
                "step_in_epoch": step_in_epoch, "code_version": "abc123def456",
                "config": {"method": "SNCLR", "backbone": "resnet18", "epochs": planned}}, path)
    return path


@pytest.mark.parametrize("epoch,planned,step,complete", [(100, 100, 0, True), (100, 800, 0, False),
                                                         (3, 10, 7, False), (10, 10, 7, False), (10, 10, 0, True)])
def test_pretrain_schedule_of_our_checkpoints(tmp_path, epoch, planned, step, complete):
    """A 100-epoch snapshot of an 800-epoch run, or a mid-epoch (interrupt) save, is not a finished run;
    a step position marks an interrupted epoch whatever the epoch counts say."""
    meta = load_backbone_state_dict(snclr_checkpoint(tmp_path / "c.pth", epoch=epoch, planned=planned,
                                                     step_in_epoch=step)).meta
    assert (meta["pretrain_epochs"], meta["pretrain_epochs_planned"], meta["pretrain_complete"]) == \
        (epoch, planned, complete)
    assert meta["pretrain_code_version"] == "abc123def456"


def test_pretrain_schedule_is_unknown_without_a_config():
    assert pretrain_schedule({"epoch": 5})["pretrain_complete"] is None


def test_an_early_snapshot_is_recorded_as_such(data, tmp_path):
    """Fails on the pre-issue-8 code, whose record said only pretrain_epochs=100."""
    checkpoint = snclr_checkpoint(tmp_path / "c.pth", epoch=100, planned=800)
    run("knn", data, tmp_path / "run", "--checkpoint", str(checkpoint), "--k", "2", "--image-size", "32")
    [record] = read_records(tmp_path / "run" / "results.jsonl")
    assert (record.pretrain_epochs, record.pretrain_epochs_planned, record.pretrain_complete) == (100, 800, False)
    assert record.provenance["pretrain_code_version"] == "abc123def456"
    assert not record.protocol_conformant


# --- resume identity ------------------------------------------------------------------------------

def test_another_seed_refuses_to_resume_naming_the_flag(data, tmp_path):
    """Fails on the pre-issue-8 code: seed 1 resumed the finished seed-0 state and recorded its numbers."""
    args = ["--checkpoint", "identity", "--epochs", "2", "--batch-size", "6"]
    run("linear-fast", data, tmp_path / "run", *args, "--seed", "0")
    message = refused("linear-fast", data, tmp_path / "run", *args, "--seed", "1")
    assert "linear_fast_state.pt" in message and "--seed 0 in the state, 1 now" in message
    message = refused("linear-fast", data, tmp_path / "run", *args, "--eval-every", "2")
    assert "--eval-every 1 in the state, 2 now" in message
    assert len(read_records(tmp_path / "run" / "results.jsonl")) == 1
    run("linear-fast", data, tmp_path / "run", *args, "--seed", "1", "--restart")
    assert [r.seed for r in read_records(tmp_path / "run" / "results.jsonl")] == [0, 1]


# --- environment errors: one line naming the path -----------------------------------------------

def test_a_corrupt_resume_state_is_one_line(data, tmp_path):
    """Fails on the pre-issue-8 code: torch.load's traceback."""
    (tmp_path / "run").mkdir()
    state = tmp_path / "run" / "linear_fast_state.pt"
    state.write_bytes(b"PK\x03\x04 truncated")
    message = refused("linear-fast", data, tmp_path / "run", "--checkpoint", "identity", "--epochs", "1")
    assert str(state) in message and "corrupt resume state" in message


def test_a_corrupt_feature_cache_is_one_line(data, tmp_path):
    """Fails on the pre-issue-8 code: torch.load's traceback."""
    run("knn", data, tmp_path / "run", "--checkpoint", "identity", "--k", "2")
    for cached in (tmp_path / "run" / "feature_cache").glob("*.pt"):
        cached.write_bytes(cached.read_bytes()[:100])
    message = refused("knn", data, tmp_path / "run", "--checkpoint", "identity", "--k", "2")
    assert "feature_cache" in message and "corrupt feature cache" in message


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_corrupt_image_is_one_line_naming_it(data, tmp_path, workers):
    """Fails on the pre-issue-8 code: PIL's UnidentifiedImageError traceback (wrapped by the DataLoader
    worker with --num-workers 1)."""
    broken = data / "val" / "n00000001" / "n00000001_2.png"
    broken.write_bytes(b"not a png")
    message = refused("knn", data, tmp_path / "run", "--checkpoint", "identity", "--k", "2",
                      "--num-workers", workers)
    assert str(broken) in message and "unreadable image" in message
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_an_out_dir_that_cannot_be_made_is_one_line(data, tmp_path):
    """Fails on the pre-issue-8 code: mkdir's FileExistsError/NotADirectoryError traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    message = refused("knn", data, blocker / "run", "--checkpoint", "identity", "--k", "2")
    assert str(blocker) in message


def test_a_full_disk_is_one_line_and_leaves_no_torn_record(data, tmp_path):
    """The record's write stops part-way: results.jsonl already holds blank lines up to 100 bytes
    under the child's RLIMIT_FSIZE, so the kernel writes 100 bytes of the record, then refuses (as a
    full disk does, with EFBIG for ENOSPC). The file is cut back to its previous length. Fails on the
    pre-issue-8 code: an OSError traceback. (It used /dev/full through a symbolic link, which
    results.jsonl no longer follows.)"""
    import os
    import resource
    import signal
    import sys
    from classification_fixtures import REPO
    limit = 2**20
    results = tmp_path / "run" / "results.jsonl"
    results.parent.mkdir()
    results.write_text("\n" * (limit - 100))

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    child = subprocess.run([sys.executable, "-m", "evaluate", "knn", "--dataset", "imagefolder", "--data-dir",
                            str(data), "--out-dir", str(tmp_path / "run"), *FAST, "--checkpoint", "identity",
                            "--k", "2"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                           preexec_fn=limit_file_size, capture_output=True, text=True, timeout=300)
    assert child.returncode != 0
    assert child.stderr.strip().splitlines()[-1] == (f"error: {results}: cannot write the result record "
                                                     "(File too large)")
    assert results.read_text() == "\n" * (limit - 100)


def test_a_full_disk_while_caching_features_is_one_line(data, tmp_path):
    """The feature cache's save fails (a 16 kB RLIMIT_FSIZE in the child; the raw-pixel train features
    are 18 kB): torch's writer says "unexpected pos", the user reads one line naming the file. Fails
    on the issue-16 code: a RuntimeError traceback."""
    import os
    import resource
    import signal
    import sys
    from classification_fixtures import REPO

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    child = subprocess.run([sys.executable, "-m", "evaluate", "knn", "--dataset", "imagefolder", "--data-dir",
                            str(data), "--out-dir", str(tmp_path / "run"), *FAST, "--checkpoint", "identity",
                            "--k", "2"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                           preexec_fn=limit_file_size, capture_output=True, text=True, timeout=300)
    assert child.returncode != 0
    last = child.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'run' / 'feature_cache'}/") and last.endswith(".pt: File too large")
    assert not list((tmp_path / "run" / "feature_cache").iterdir()) and not (tmp_path / "run" / "results.jsonl").exists()


# --- files the evaluators write, faults that lost work (issues 15 section 3, 16 section 2) --------

def test_results_file_that_is_a_symlink_is_refused_before_the_evaluation(data, tmp_path):
    """Fails on the issue-15 code: the record was appended to the link's target."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.jsonl").symlink_to(victim)
    message = refused("knn", data, tmp_path / "run", "--checkpoint", "identity", "--k", "2")
    assert message == (f"error: {tmp_path / 'run' / 'results.jsonl'} is a symbolic link; refusing to append a "
                       "record through it (remove the link or choose another output folder)")
    assert victim.read_text() == "precious\n" and not (tmp_path / "run" / "feature_cache").exists()


def test_metrics_log_that_is_a_symlink_is_refused(data, tmp_path):
    """Fails on the issue-15 code: the per-epoch log was appended to the link's target."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "linear_fast_metrics.jsonl").symlink_to(victim)
    message = refused("linear-fast", data, tmp_path / "run", "--checkpoint", "identity", "--epochs", "1")
    assert "linear_fast_metrics.jsonl is a symbolic link; refusing to write through it" in message
    assert victim.read_text() == "precious\n" and not (tmp_path / "run" / "results.jsonl").exists()


def test_results_file_without_a_final_newline_is_refused_before_the_evaluation(data, tmp_path):
    """Fails on the issue-16 code: the evaluation ran, its record was glued onto the fragment, the run
    exited 0, and `tables` then refused the file."""
    results = tmp_path / "run" / "results.jsonl"
    results.parent.mkdir()
    results.write_text('{"schema": "snclr-bench/result/v1", "meth')
    message = refused("knn", data, tmp_path / "run", "--checkpoint", "identity", "--k", "2")
    assert message == (f"error: {results}: its last line has no newline (cut short or hand-edited); complete or "
                       "remove that line, then run again: a record appended now would be glued onto it")
    assert results.read_text() == '{"schema": "snclr-bench/result/v1", "meth'
    assert not (tmp_path / "run" / "feature_cache").exists()   # checked before any work


def test_an_edited_feature_cache_is_refused(data, tmp_path):
    """The issue's attack: the cached val features are edited (here: rows swapped) with the key kept,
    which turned a kNN 62.00 into 52.00 with no warning. Fails on the issue-15 code (the edited
    features were used and the record written)."""
    run("knn", data, tmp_path / "run", "--checkpoint", "identity", "--k", "2")
    [honest] = read_records(tmp_path / "run" / "results.jsonl")
    for cached in (tmp_path / "run" / "feature_cache").glob("*.pt"):
        stored = torch.load(cached, weights_only=True)
        stored["features"] = stored["features"].roll(1, dims=0)   # every image gets another's features
        torch.save(stored, cached)
    message = refused("knn", data, tmp_path / "run", "--checkpoint", "identity", "--k", "2")
    assert "feature_cache" in message and "does not match the digest stored with it (edited or damaged)" in message
    assert read_records(tmp_path / "run" / "results.jsonl") == [honest]


def test_default_feature_cache_is_inside_the_out_dir(data, tmp_path):
    """Fails on the issue-15 code: OUT_DIR/../feature_cache, i.e. /tmp/feature_cache for --out-dir /tmp/x."""
    run("knn", data, tmp_path / "x", "--checkpoint", "identity", "--k", "2")
    assert list((tmp_path / "x" / "feature_cache").glob("*.pt")) and not (tmp_path / "feature_cache").exists()


@pytest.mark.parametrize("subcommand, flags, expected", [
    ("knn", ["--num-workers", "-1"], "error: --num-workers must be >= 0, got -1"),
    ("knn", ["--test-chunk", "0"], "error: --test-chunk must be >= 1 (rows per similarity block), got 0"),
    ("knn", ["--train-chunk", "0"], "error: --train-chunk must be >= 1 (rows per similarity block), got 0"),
])
def test_bad_run_flags_are_one_line(data, tmp_path, subcommand, flags, expected):
    """Fails on the issue-16 code: a DataLoader ValueError traceback (--num-workers -1) and "range() arg
    3 must not be zero" (a chunk of 0)."""
    base = [arg for arg in FAST if arg not in ("--num-workers", "0")]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_info:
        evaluate_main([subcommand, "--dataset", "imagefolder", "--data-dir", str(data), "--out-dir",
                       str(tmp_path / "run"), *base, "--checkpoint", "identity", "--k", "2", *flags])
    assert exit_info.value.code == 2 and stderr.getvalue().strip().splitlines() == [expected], stderr.getvalue()
    assert not (tmp_path / "run").exists()


def test_a_diverged_linear_probe_is_not_recorded(data, tmp_path):
    """An lr of 1e38 overflows the float32 head and the loss turns NaN. Fails on the issue-16 code:
    the diverged probe's accuracy was recorded as a result."""
    message = refused("linear-fast", data, tmp_path / "run", "--checkpoint", "identity", "--epochs", "2",
                      "--batch-size", "6", "--base-lr", "1e38")
    assert message.startswith("error: linear_fast diverged: the training loss is ") and "lower the learning rate" \
        in message, message
    assert "in epoch 1; no result recorded (nothing was saved)" in message
    assert not (tmp_path / "run" / "results.jsonl").exists()


@pytest.mark.parametrize("kind", ["empty", "directory"])
def test_an_empty_or_directory_checkpoint_is_named_so(data, tmp_path, kind):
    """Fails on the issue-16 code: "not a readable PyTorch checkpoint (EOFError: )" for a 0-byte file and
    "does not exist" for a folder that does."""
    path = tmp_path / "ckpt.pth"
    if kind == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()
    message = refused("knn", data, tmp_path / "run", "--checkpoint", str(path), "--k", "2")
    assert message == (f"error: {path}: empty file (0 bytes), not a checkpoint" if kind == "empty"
                       else f"error: checkpoint {path} is a directory, expected a file")
