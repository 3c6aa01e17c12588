"""Every LaTeX table the builder writes compiles under pdflatex, and names cannot break any output.

Three record sets: the shipped study with the published numbers of results/reference (what a user
gets from `python -m evaluate tables results/studies/fmnist_table4 --out DIR`), the published
baselines alone, and a messy set whose names hold what Markdown, LaTeX, CSV and paths treat as syntax.

pdflatex comes from Debian's texlive-latex-base and texlive-latex-recommended (scripts/install_latex.sh,
run by the Makefile set-up). Without it these compile tests skip, except under CI=true, where they fail.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from evaluate.report import tables
from evaluate.report.facts import DEFAULT_REFERENCES, REFERENCE_DIR
from evaluate.report.records import ResultRecord, write_record

REPO = Path(__file__).resolve().parents[3]
STUDY = REPO / "results" / "studies" / "fmnist_table4"
DOCUMENT = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n\\input{%s}\n\\end{document}\n"
MESSY_METHODS = ("A|B", "x_y & z 100% #1", "[1] starts with a bracket", "*starred", '=HYPERLINK("http://x")',
                 "-negative", "back\\slash {brace} ~tilde ^caret $dollar", "naïve Ðþ τ_w ✓ ☃", "<angle>")


def pdflatex() -> str:
    found = shutil.which("pdflatex")
    if found is None:
        reason = "pdflatex not installed (scripts/install_latex.sh: texlive-latex-base texlive-latex-recommended)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must compile the LaTeX tables")
        pytest.skip(reason)
    return found


def compile_errors(tex: Path, work: Path) -> str:
    """"" when ``tex`` compiles inside a minimal document; else pdflatex's error lines."""
    document = work / f"{tex.parent.name}_{tex.stem}.tex"
    document.write_text(DOCUMENT % tex.resolve().as_posix(), encoding="utf-8")
    result = subprocess.run([pdflatex(), "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape",
                             document.name], cwd=work, capture_output=True, text=True, timeout=120)
    log = document.with_suffix(".log").read_text(encoding="utf-8", errors="replace")
    problems = [line for line in log.splitlines() if line.startswith("!") or "Missing character" in line]
    if result.returncode != 0 and not problems:
        problems = [f"pdflatex exit status {result.returncode}"]
    return "\n".join(problems)


def assert_all_compile(out: Path, work: Path) -> list[str]:
    written = sorted(out.rglob("*.tex"))
    assert written, f"no .tex under {out}"
    work.mkdir()
    failures = {str(tex.relative_to(out)): compile_errors(tex, work) for tex in written}
    assert {name: error for name, error in failures.items() if error} == {}
    return [str(tex.relative_to(out)) for tex in written]


def messy_set(folder: Path) -> tuple[Path, Path]:
    """Records and a reference CSV whose names are full of syntax; returns (records, reference CSV)."""
    records = folder / "records" / "results.jsonl"
    for i, method in enumerate(MESSY_METHODS):
        common = dict(method=method, backbone="resnet50", pretrain_epochs=100, checkpoint_sha256=f"{i:02x}" * 32,
                      code_version="x", created_at="2024-01-01T00:00:00+00:00",
                      deviations=["--limit-train: 10 images & 5% #", "image_size: 224 -> 32 {small}"] if i % 2 else [])
        for dataset in ("imagenet-1k", "../x", "/abs/evil"):
            write_record(records, ResultRecord(dataset=dataset, protocol="linear", protocol_id="lin_[1]",
                                               metrics_final={"top1": 60.0 + i}, **common))
            write_record(records, ResultRecord(dataset=dataset, protocol="semisup_1pct", protocol_id="semi%",
                                               metrics_final={"top1": 40.0 + i, "top5": 70.0 - i}, **common))
            write_record(records, ResultRecord(dataset=dataset, protocol="knn", protocol_id="knn#",
                                               metrics_final={"knn_top1_k20": 50.0 + i}, **common))
        write_record(records, ResultRecord(dataset="imagenet-1k", protocol="linear", protocol_id="ablation",
                                           variant={"neighbors": "soft", "k": i, "loss_form": "a|b_c"},
                                           metrics_final={"top1": 70.0 + i},
                                           **{**common, "checkpoint_sha256": f"{i + 100:02x}" * 32}))
    reference = folder / "messy.csv"
    rows = [dict(table="1a", protocol="linear", dataset=dataset, method=method, backbone="resnet50",
                 pretrain_epochs="100", metric="top1", value=str(50 + n), source=source, note=note)
            for n, (dataset, method, source, note) in enumerate([
                ("imagenet-1k", "Published\nwith a newline", "[2] a source\nover two lines", ""),
                ("imagenet-1k", "Multi | crop", "100% sure & #1 {source}", "with multi-crop"),
                ("new\nline set", "Z", "[3] third_source ~ ^", ""),
                ("../x", "Published in ../x", "source \\ backslash", "")])]
    rows += [dict(table="2", protocol="semi_supervised_1pct", dataset="imagenet-1k", method=f"S{n}",
                  backbone="resnet50", pretrain_epochs="", metric="top1", value=str(45 + n), source=f"[{n}] paper {n}",
                  note="") for n in range(3)]
    pd.DataFrame(rows).to_csv(reference, index=False)
    return records.parent, reference


def test_shipped_study_and_references_compile(tmp_path):
    """Fails on today's code: Tables 1a, 1b, 2 and 3 with two or more published sources joined the
    footnotes with \\\\ and the next started with [2], read by LaTeX as a spacing argument."""
    pdflatex()
    out = tmp_path / "out"
    tables.build_tables([STUDY], DEFAULT_REFERENCES, out)
    compiled = assert_all_compile(out, tmp_path / "latex")
    assert {"fashion-mnist/table4.tex", "fashion-mnist/knn.tex", "imagenet-1k/table1a.tex", "imagenet-1k/table2.tex",
            "coco-2017/table3.tex"} <= set(compiled)


def test_published_baselines_compile(tmp_path):
    """The published baselines alone (results/reference copy of ../shared/reference)."""
    pdflatex()
    out = tmp_path / "out"
    tables.build_tables([], [REFERENCE_DIR / "published_baselines.csv"], out)
    assert "coco-2017/table3.tex" in assert_all_compile(out, tmp_path / "latex")


def test_messy_names_compile_and_stay_inside_every_format(tmp_path, caplog):
    """Fails on today's code: | opened a Markdown column; a data set "../x" wrote beside --out and
    "/abs/evil" under /abs; a newline in a name ended the LaTeX comment of the title; a row after
    "\\\\" starting with [1] broke pdflatex; "=HYPERLINK(...)" reached leaderboard.csv as a formula."""
    pdflatex()
    tables._latex_char.cache_clear()  # a character's warning is given once per process
    records, reference = messy_set(tmp_path / "in")
    out = tmp_path / "deep" / "out"
    written = tables.build_tables([records], [reference], out)
    # nothing outside --out: the only files under tmp_path are the inputs and what was written
    files = {p for p in tmp_path.rglob("*") if p.is_file()}
    inside = {p for p in files if out.resolve() in p.resolve().parents}
    assert files - inside == {records / "results.jsonl", reference}
    assert {p.parent.name for p in written.values()} == {"out", "imagenet-1k", tables.path_part("../x"),
                                                         tables.path_part("/abs/evil"), tables.path_part("new\nline set")}
    assert tables.path_part("../x").startswith("x-") and tables.path_part("/abs/evil").startswith("abs_evil-")
    assert_all_compile(out, tmp_path / "latex")
    for tex in out.rglob("*.tex"):
        lines = tex.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("% ") and lines[1].startswith(r"\begin{tabular}"), tex
    assert any("'☃'" in record.getMessage() for record in caplog.records)  # the one character LaTeX cannot print
    # Markdown: every row has as many unescaped | as the header
    for md in out.rglob("*.md"):
        for block in re.findall(r"((?:^\|.*\n)+)", md.read_text(encoding="utf-8"), flags=re.MULTILINE):
            counts = {len(re.findall(r"(?<!\\)\|", line)) for line in block.splitlines()}
            assert len(counts) == 1, (md, block)
    markdown = (out / "imagenet-1k" / "table1a.md").read_text(encoding="utf-8")
    assert "| A\\|B " in markdown and "| Published with a newline " in markdown
    # CSV: a text cell that a spreadsheet would run is neutralised; numbers stay numbers
    board = pd.read_csv(out / "leaderboard.csv")
    assert {"'=HYPERLINK(\"http://x\")", "'-negative", "A|B"} <= set(board["method"])
    assert board["linear_top1"].dtype == float
    cells = pd.read_csv(out / "imagenet-1k" / "table1a.csv")
    assert "'--limit-train: 10 images & 5% #; image_size: 224 -> 32 {small}" in set(cells["deviations"].dropna())


def test_csv_neutralises_text_cells_only():
    frame = pd.DataFrame({"name": ["=1+2", "+x", "-x", "@x", "-1.5", "plain", "\tx"], "value": [-1.5, 2, -3e-4, 0, 1, 2, 3]})
    parsed = pd.read_csv(io.StringIO(tables.csv_text(frame)), dtype={"name": str})
    assert parsed["name"].tolist() == ["'=1+2", "'+x", "'-x", "'@x", "-1.5", "plain", "'\tx"]
    assert parsed["value"].tolist() == [-1.5, 2, -3e-4, 0, 1, 2, 3]


def test_out_removes_the_tables_of_the_earlier_run_only(tmp_path):
    """Fails on today's code: the imagenet-1k tables of the first run stayed beside the second's.

    The manifest of the earlier run is trusted only for names the builder writes: one that points
    outside the folder (tampered, or a bug) is never deleted.
    """
    records, reference = messy_set(tmp_path / "in")
    out = tmp_path / "out"
    first = tables.build_tables([records], [reference], out)
    assert "imagenet-1k/table1a.tex" in first
    (out / "my_notes.txt").write_text("mine")
    (tmp_path / "keep.md").write_text("not the builder's")
    manifest = out / tables.MANIFEST
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) + ["../keep.md", "/etc/passwd"]))
    fmnist = tmp_path / "fmnist" / "results.jsonl"
    write_record(fmnist, ResultRecord(method="SNCLR", backbone="resnet18", dataset="fashion-mnist", protocol="linear",
                                      protocol_id="lin", metrics_final={"top1": 80.0}, pretrain_epochs=10,
                                      checkpoint_sha256="1" * 64, code_version="x", created_at="2024-01-01T00:00:00"))
    second = tables.build_tables([fmnist.parent], [], out)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(second) | {"my_notes.txt", tables.MANIFEST}
    assert not (out / "imagenet-1k").exists() and (tmp_path / "keep.md").read_text() == "not the builder's"
    assert json.loads(manifest.read_text()) == sorted(second)


def test_latex_text_escapes_what_latex_reads_as_syntax(caplog):
    """Each rule of latex_text on its own, so that a break shows here before any pdflatex run."""
    assert tables.latex_text("a_b & 5% #1 $x ~ ^ {y} \\ |<>") == (
        r"a\_b \& 5\% \#1 \$x \textasciitilde{} \textasciicircum{} \{y\} \textbackslash{} "
        r"\textbar{}\textless{}\textgreater{}")
    assert [tables.latex_text(t) for t in ("[2] x", "*x", "x [2]")] == ["{}[2] x", "{}*x", "x [2]"]
    assert tables.latex_text(" two\n\nlines\t x\r\n") == "two lines x"
    assert tables.latex_text("--limit-train -> 10") == r"-{}-limit-train -\textgreater{} 10"
    tables._latex_char.cache_clear()  # a character's warning is given once per process
    with caplog.at_level("WARNING", logger="evaluate.report.tables"):
        assert tables.latex_text("× τ ✓ ﬁ é ± †2 – — ☃") == (
            r"$\times$ $\tau$ $\surd$ fi é $\pm$ \dag{}2 \textendash{} \textemdash{} ?")
    assert [r.getMessage() for r in caplog.records] == ["LaTeX: '☃' (U+2603) has no plain-LaTeX form; written as '?'"]


def test_markdown_and_path_names():
    assert tables.markdown_text("A|B\nC  D") == "A\\|B C D"
    assert tables.path_part("fashion-mnist") == "fashion-mnist" and tables.path_part("imagenet-1k") == "imagenet-1k"
    for name, start in (("../x", "x-"), ("/abs/evil", "abs_evil-"), ("", "unnamed-"), (".hidden", "hidden-"),
                        ("-rf", "rf-"), ("a b", "a_b-")):
        safe = tables.path_part(name)
        assert safe.startswith(start) and len(safe) == len(start) + 8 and "/" not in safe, (name, safe)
    assert tables.path_part("a b") != tables.path_part("a_b") == "a_b"  # a changed name never takes another's
