"""Label subsets (SimCLR lists and generated ones) and whole-network fine-tuning."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from classification_fixtures import (FASHION_MNIST, PYTHON, REPO, SHARED, TinyBackbone, colour_blobs,
                                     write_image_folder, write_split_tree)
from evaluate.report.records import read_records
from evaluate.classification.semisup import (SIMCLR_SUBSETS, FineTuneSettings, SubsetFileError, check_simclr_subset,
                              fine_tune, generate_subset, implementation_deviations, label_subset, preset_settings,
                              read_subset_file, resolve_subset, shipped_subset, subset_names, subset_sha256,
                              subset_text, write_subset_file)
from pretrain.data import FashionMNIST, IndexedImageFolder

REFERENCE_SUBSETS = SHARED / "reference" / "imagenet_subsets"


def test_presets_match_swav_and_barlow_twins():
    swav1, swav10, barlow = preset_settings("swav", 1), preset_settings("swav", 10), preset_settings("barlow", 1)
    assert (swav1.trunk_lr, swav1.head_lr, swav10.trunk_lr, swav10.head_lr) == (0.02, 5.0, 0.01, 0.2)
    assert (swav1.epochs, swav1.schedule, swav1.milestones, swav1.gamma) == (20, "step", (12, 16), 0.2)
    assert (barlow.epochs, barlow.schedule, barlow.trunk_lr, barlow.head_lr) == (20, "cosine", 0.002, 0.5)
    assert swav1.weight_decay == barlow.weight_decay == 0.0
    assert swav1.lrs_at(11) == [0.02, 5.0]
    assert swav1.lrs_at(12) == pytest.approx([0.004, 1.0]) and swav1.lrs_at(19) == pytest.approx([0.0008, 0.2])
    assert barlow.lrs_at(0) == [0.002, 0.5] and barlow.lrs_at(10) == pytest.approx([0.001, 0.25])
    assert swav1.protocol_id(1) == "semisup-1pct_swav_sgd-step12-16-20e-b256-lr0.02-head5"


@pytest.mark.parametrize("percent", [1, 10])
def test_shipped_simclr_lists_pass_the_check(percent):
    """Runs in a plain clone: the lists ship in evaluate/classification/subsets/ (before issue 8 it skipped)."""
    path = shipped_subset(percent)
    names = read_subset_file(path)
    assert len(names) == SIMCLR_SUBSETS[percent][0]
    assert names[0].endswith(".JPEG") and names[0].startswith("n")
    check_simclr_subset(path, names, percent)


@pytest.mark.parametrize("percent", [1, 10])
def test_shipped_lists_are_simclrs_byte_for_byte(percent):
    reference = REFERENCE_SUBSETS / f"{percent}percent.txt"
    if not reference.is_file():
        pytest.skip(f"reference copy {reference} not present (it lives outside the repository)")
    assert subset_text(shipped_subset(percent)).encode("utf-8") == reference.read_bytes()


def test_crlf_and_a_missing_final_newline_hash_as_the_same_list(tmp_path):
    """Fails on the pre-issue-8 code, which hashed the raw bytes: a CRLF copy was 'not SimCLR's list'."""
    text = subset_text(shipped_subset(1))
    crlf, bare = tmp_path / "crlf.txt", tmp_path / "bare.txt"
    crlf.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    bare.write_bytes(text.rstrip("\n").encode("utf-8"))
    for copy in (crlf, bare):
        assert subset_sha256(copy) == SIMCLR_SUBSETS[1][1]
        check_simclr_subset(copy, read_subset_file(copy), 1)


def test_a_non_utf8_list_is_a_one_line_error(tmp_path):
    """Fails on the pre-issue-8 code, where read_text raised UnicodeDecodeError (a traceback)."""
    listed = tmp_path / "latin1.txt"
    listed.write_bytes("n00000000_caf\xe9.png\n".encode("latin-1"))
    with pytest.raises(SubsetFileError, match=r"latin1.txt: not UTF-8 text \(byte 13") as error:
        read_subset_file(listed)
    assert "\n" not in str(error.value)


def test_an_edited_simclr_list_is_refused(tmp_path):
    lines = subset_text(shipped_subset(1)).splitlines()
    short = tmp_path / "1percent.txt"
    short.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(SubsetFileError, match="12810 lines"):
        check_simclr_subset(short, read_subset_file(short), 1)
    swapped = tmp_path / "swapped.txt"  # same count and classes, one file replaced: only the hash tells
    swapped.write_text("\n".join([lines[0].split("_")[0] + "_999999.JPEG", *lines[1:]]) + "\n")
    with pytest.raises(SubsetFileError, match="sha256"):
        check_simclr_subset(swapped, read_subset_file(swapped), 1)
    with pytest.raises(SubsetFileError, match="12811 lines / 1000 classes"):
        check_simclr_subset(shipped_subset(1), read_subset_file(shipped_subset(1)), 10)


def test_shipped_1percent_list_is_the_imagenet_default_and_resolves_against_an_imagenet_shaped_tree(tmp_path):
    """Without --subset-file ImageNet uses the shipped list (before issue 8: refused, asking for the file)."""
    # 12,811 empty files in 1,000 wnid folders: ImageFolder only looks at names when indexing.
    names = read_subset_file(shipped_subset(1))
    for name in names:
        folder = tmp_path / "train" / name.split("_")[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()
    dataset = IndexedImageFolder(tmp_path / "train")
    indices, source = label_subset(dataset, 1, subset_file=None, imagenet=True, seed=0,
                                   generated_path=tmp_path / "unused.txt")
    assert source == str(shipped_subset(1)) and not (tmp_path / "unused.txt").exists()
    assert len(indices) == 12811 and len(set(indices.tolist())) == 12811
    assert {dataset.classes[dataset.targets[i]] for i in indices} == {n.split("_")[0] for n in names}
    (tmp_path / "train" / names[5].split("_")[0] / names[5]).unlink()
    with pytest.raises(SubsetFileError, match=names[5].replace(".", r"\.")):
        label_subset(IndexedImageFolder(tmp_path / "train"), 1, subset_file=None,
                     imagenet=True, seed=0, generated_path=tmp_path / "unused.txt")


def test_reader_resolves_names_on_a_small_image_folder(tmp_path):
    write_image_folder(tmp_path / "train", classes=3, per_class=4)
    dataset = IndexedImageFolder(tmp_path / "train")
    listed = tmp_path / "subset.txt"
    listed.write_text("n00000001_2.png\n\nn00000000_0.png\nn00000002_3.png\n")
    indices = resolve_subset(read_subset_file(listed), dataset, str(listed))
    assert [dataset.samples[i][0].split("/")[-1] for i in indices] == ["n00000001_2.png", "n00000000_0.png",
                                                                        "n00000002_3.png"]
    assert [dataset.targets[i] for i in indices] == [1, 0, 2]


def test_reader_accepts_class_prefixed_names_of_unprefixed_files(tmp_path):
    write_image_folder(tmp_path / "train", classes=2, per_class=3, prefix_with_class=False)
    dataset = IndexedImageFolder(tmp_path / "train")
    indices = generate_subset(np.asarray(dataset.targets), 50, seed=0)
    names = subset_names(dataset, indices)
    assert all(n.startswith(("n00000000_img", "n00000001_img")) for n in names)
    assert resolve_subset(names, dataset, "generated").tolist() == indices.tolist()


@pytest.mark.parametrize("moved", [False, True])
def test_reader_refuses_missing_images(tmp_path, moved):
    write_image_folder(tmp_path / "train", classes=2, per_class=2)
    if moved:  # the file exists, but in another class's folder than its name says
        (tmp_path / "train" / "n00000000" / "n00000000_1.png").rename(tmp_path / "train" / "n00000001" / "n00000000_1.png")
        listed_name = "n00000000_1.png"
    else:
        listed_name = "n00000000_99.png"
    listed = tmp_path / "subset.txt"
    listed.write_text(f"n00000000_0.png\n{listed_name}\n")
    dataset = IndexedImageFolder(tmp_path / "train")
    with pytest.raises(SubsetFileError, match=rf"1 listed image\(s\) are not in the training set.*{listed_name}"):
        resolve_subset(read_subset_file(listed), dataset, str(listed))


def test_subset_covering_too_few_classes_is_refused(tmp_path):
    write_image_folder(tmp_path / "train", classes=3, per_class=2)
    listed = tmp_path / "subset.txt"
    listed.write_text("n00000000_0.png\nn00000001_1.png\n")
    with pytest.raises(SubsetFileError, match="covers 2 classes, but the training set has 3"):
        label_subset(IndexedImageFolder(tmp_path / "train"), 10, subset_file=listed, imagenet=False, seed=0,
                     generated_path=tmp_path / "g.txt")


@pytest.mark.parametrize("text,message", [("", "empty"), ("nounderscore.png\n", "not '<class>_<id>'"),
                                          ("a_1\na_1\n", "listed twice")])
def test_malformed_list_files_are_refused(tmp_path, text, message):
    listed = tmp_path / "subset.txt"
    listed.write_text(text)
    with pytest.raises(SubsetFileError, match=message):
        read_subset_file(listed)


def test_imagenet_with_another_list_is_refused(tmp_path):
    write_image_folder(tmp_path / "train", classes=2, per_class=2)
    listed = tmp_path / "subset.txt"
    listed.write_text("n00000000_0.png\nn00000001_1.png\n")
    with pytest.raises(SubsetFileError, match="SimCLR's 1percent.txt"):
        label_subset(IndexedImageFolder(tmp_path / "train"), 1, subset_file=listed, imagenet=True, seed=0,
                     generated_path=tmp_path / "g.txt")


def test_each_presets_departure_from_its_reference_is_a_deviation():
    """Fails on the pre-issue-8 code, where neither departure reached the record."""
    assert implementation_deviations("swav", 1) == [
        "head init: N(0, 0.01), bias 0 (SwAV eval_semisup.py: PyTorch's default nn.Linear init)"]
    assert implementation_deviations("swav", 8) == implementation_deviations("swav", 1)  # SwAV itself uses SyncBN
    assert implementation_deviations("barlow", 1) == []
    assert implementation_deviations("barlow", 2) == [
        "BN synchronised over the 2 ranks (Barlow Twins evaluate.py: per-GPU BN)"]


def test_generated_subset_is_deterministic_balanced_and_seeded():
    targets = np.repeat(np.arange(10), 600)  # Fashion-MNIST's 6,000 per class, shrunk 10x
    first, again, other = (generate_subset(targets, 1, seed=0), generate_subset(targets, 1, seed=0),
                           generate_subset(targets, 1, seed=1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.bincount(targets[first]).tolist() == [6] * 10
    assert np.bincount(targets[generate_subset(targets, 10, seed=0)]).tolist() == [60] * 10
    assert np.all(np.diff(first) > 0)
    uneven = np.array([0] * 50 + [1] * 3)
    assert np.bincount(uneven[generate_subset(uneven, 1, seed=0)]).tolist() == [1, 1]  # at least one each


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason=f"Fashion-MNIST not found at {FASHION_MNIST}")
def test_fashion_mnist_list_is_written_and_read_back(tmp_path):
    dataset = FashionMNIST(FASHION_MNIST, "train", limit=500)
    indices, source = label_subset(dataset, 10, subset_file=None, imagenet=False, seed=3,
                                   generated_path=tmp_path / "fm_10pct.txt")
    lines = (tmp_path / "fm_10pct.txt").read_text().splitlines()
    assert len(lines) == len(indices) == 50 and source == str(tmp_path / "fm_10pct.txt")
    label, position = lines[0].removesuffix(".png").split("_")
    assert int(dataset.targets[int(position)]) == int(label)
    again, _ = label_subset(dataset, 10, subset_file=tmp_path / "fm_10pct.txt", imagenet=False, seed=99,
                            generated_path=tmp_path / "unused.txt")
    assert again.tolist() == indices.tolist()
    write_subset_file(tmp_path / "bad.txt", [f"{(int(label) + 1) % 10}_{position}.png", *lines[1:]])
    with pytest.raises(SubsetFileError, match="another class"):
        label_subset(dataset, 10, subset_file=tmp_path / "bad.txt", imagenet=False, seed=0,
                     generated_path=tmp_path / "unused.txt")


def test_fine_tune_trains_the_whole_network(tmp_path):
    torch.manual_seed(0)
    backbone = TinyBackbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    settings = FineTuneSettings(epochs=6, batch_size=16, trunk_lr=0.05, head_lr=0.5, milestones=(4,))
    result = fine_tune(backbone, 8, colour_blobs(64), colour_blobs(48, seed=1), num_classes=3, settings=settings,
                       device=torch.device("cpu"), out_dir=tmp_path, num_workers=0, tensorboard=False)
    after = backbone.state_dict()
    assert not torch.equal(after["conv.weight"], before["conv.weight"])       # trunk trained
    assert not torch.equal(after["bn.running_mean"], before["bn.running_mean"])  # BN in train mode
    assert result["final"]["top1"] > 70.0
    assert result["history"][4]["lr"] == pytest.approx(0.05 * 0.2)  # step decay at epoch 4 (0-based)


def test_cli_semisup_generates_and_records_its_list(tmp_path):
    data = write_split_tree(tmp_path / "data", classes=3, train_per_class=10, val_per_class=2)
    out = tmp_path / "run"
    proc = subprocess.run([str(PYTHON), "-m", "evaluate", "semisup", "--percent", "10", "--checkpoint", "random",
                           "--arch", "resnet18", "--dataset", "imagefolder", "--data-dir", str(data),
                           "--image-size", "32", "--epochs", "1", "--batch-size", "3", "--num-workers", "0",
                           "--preset", "barlow", "--out-dir", str(out), "--no-tensorboard"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [record] = read_records(out / "results.jsonl")
    assert record.protocol == "semisup_10pct" and record.settings["preset"] == "barlow"
    assert record.settings["labelled_images"] == 3
    listed = read_subset_file(record.settings["subset_file"])
    assert len(listed) == 3 and {n.split("_")[0] for n in listed} == {"n00000000", "n00000001", "n00000002"}


def test_cli_semisup_refuses_a_list_naming_missing_images(tmp_path):
    data = write_split_tree(tmp_path / "data", classes=2, train_per_class=3, val_per_class=1)
    listed = tmp_path / "subset.txt"
    listed.write_text("n00000000_0.png\nn00000001_42.png\n")
    out = tmp_path / "run"
    proc = subprocess.run([str(PYTHON), "-m", "evaluate", "semisup", "--percent", "1", "--checkpoint", "random",
                           "--arch", "resnet18", "--dataset", "imagefolder", "--data-dir", str(data),
                           "--subset-file", str(listed), "--out-dir", str(out), "--num-workers", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "n00000001_42.png" in last
    assert not (out / "results.jsonl").exists()


def test_small_scale_overrides_are_listed_as_deviations_and_flags_win():
    from argparse import Namespace

    from evaluate.classification.semisup import resolve_settings

    none = Namespace(epochs=None, batch_size=None, trunk_lr=None, head_lr=None, min_scale=None)
    settings, deviations = resolve_settings("swav", 1, "fashion-mnist", none)
    assert (settings.batch_size, settings.head_lr, settings.trunk_lr, settings.min_scale) == (64, 0.05, 0.02, 0.5)
    assert "head_lr: 5.0 (paper) -> 0.05 (small-scale default for this data set)" in deviations
    assert "min_scale: 0.08 (paper) -> 0.5 (small-scale default for this data set)" in deviations
    assert resolve_settings("swav", 1, "imagenet-1k", none) == (preset_settings("swav", 1), [])
    flagged, deviations = resolve_settings("barlow", 10, "fashion-mnist", Namespace(**{**vars(none), "epochs": 3}))
    assert flagged.epochs == 3 and flagged.head_lr == 0.5 and "epochs: 20 (paper) -> 3 (flag)" in deviations


def test_a_gzip_bomb_subset_file_is_refused_without_filling_memory(tmp_path):
    """40 MB of newlines in a 40 kB gzip: refused after reading one byte past the 32 MB cap. Fails on
    the issue-15 code, which decompressed the whole file (a 306 kB bomb took 7.1 GB)."""
    import gzip
    bomb = tmp_path / "list.txt.gz"
    bomb.write_bytes(gzip.compress(b"\n" * (40 * 2**20)))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(SubsetFileError, match=r"list\.txt\.gz: expands to more than 32 MB"):
        subset_text(bomb)


def test_a_directory_given_as_subset_file_is_named_so(tmp_path):
    """Fails on the issue-16 code: "does not exist" for a folder that does."""
    with pytest.raises(SubsetFileError, match="is a directory, expected a file"):
        subset_text(tmp_path)
