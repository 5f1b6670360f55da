"""``vlm3r-data stats`` on a root built by the real stages: report.md and its PNGs exist and are valid images, the
numbers match the QA files, shards and scenes they summarise (recomputed here independently), links resolve, and a
rerun is byte-identical."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.stages.report_figures import PLOT_DPI
from pipeline.core.tokens import read_shard
from report_helpers import IMAGE_RE, section

LINK_RE = re.compile(r"(?<!!)\[[^\]]*\]\(([^)]+)\)")


def table(text: str) -> list[dict[str, str]]:
    """The first Markdown table of ``text`` as rows keyed by the header."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def qa_records(root: Path) -> dict[str, list[dict]]:
    return {f"{p.parent.name}/{p.stem}": [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted((root / "qa").glob("*/*.jsonl"))}


def test_report_and_plots_are_valid_images(report):
    root, text = report
    linked = IMAGE_RE.findall(text)
    expected = {"questions_per_task", "letter_balance", "mc_answers", "numeric_answers", "frames_tokens",
                "shard_sizes", "failures"}
    names = {Path(link).stem for link in linked}
    assert expected <= names
    plots_dir = root / "report" / "plots"
    assert sorted(p.name for p in plots_dir.iterdir()) == sorted(Path(link).name for link in linked)
    for link in linked:
        path = root / "report" / link
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGBA"
            assert im.size[0] >= 300 and im.size[1] >= 200
            assert "Software" not in im.info    # no tool/version stamp: reruns stay byte-identical
            pixels = np.asarray(im.convert("L"))
            assert pixels.min() < 128 < pixels.max()    # something is drawn on the white canvas
    with Image.open(plots_dir / "questions_per_task.png") as im:
        assert im.size[0] == 9 * PLOT_DPI              # fixed figure width (inches x DPI)


def test_question_numbers_match_the_qa_files(report):
    root, text = report
    records = qa_records(root)
    total = sum(len(v) for v in records.values())
    questions = section(text, "Questions")
    assert f"Total questions: **{total}** in {len(records)} files." in questions
    files = {row["file"].strip("`"): row for row in table(questions)}
    for name, recs in records.items():
        row = files[f"qa/{name}.jsonl"]
        assert int(row["questions"]) == len(recs)
        assert int(row["scenes with questions"]) == len({r["scene_key"] for r in recs})

    per_task = table(questions.split("Questions per task and split:")[1])
    want = Counter((name.split("/")[0], r["task"], name.split("/")[1]) for name, recs in records.items()
                   for r in recs)
    assert sum(int(row["total"]) for row in per_task) == total
    for row in per_task:
        for split in ("train", "val"):
            assert int(row[split]) == want.get((row["bench"], row["task"], split), 0), row


def test_letter_balance_and_numeric_answers_match(report):
    root, text = report
    letters: dict[tuple[str, str], Counter] = {}
    numeric: dict[tuple[str, str], list[float]] = {}
    for name, recs in qa_records(root).items():
        bench = name.split("/")[0]
        for r in recs:
            if r["options"]:
                letter = r["mc_answer"] if bench == "vstibench" else r["ground_truth"]
                letters.setdefault((bench, r["task"]), Counter())[letter] += 1
            else:
                numeric.setdefault((bench, r["task"]), []).append(float(r["ground_truth"]))
    assert letters and numeric
    rows = table(section(text, "Option-letter balance (multiple choice)"))
    assert {(r["bench"], r["task"]) for r in rows} == set(letters)
    for row in rows:
        want = letters[(row["bench"], row["task"])]
        assert int(row["questions"]) == sum(want.values())
        for letter in "ABCD":
            if letter in row:
                assert int(row[letter]) == want.get(letter, 0)
    rows = table(section(text, "Numeric answers"))
    assert {(r["bench"], r["task"]) for r in rows} == set(numeric)
    for row in rows:
        values = numeric[(row["bench"], row["task"])]
        assert int(row["questions"]) == len(values)
        assert float(row["min"]) == pytest.approx(min(values)) and float(row["max"]) == pytest.approx(max(values))


def test_frames_tokens_and_shards_match(report):
    root, text = report
    rows = {r["per scene"]: r for r in table(section(text, "Frames and tokens per scene"))}
    assert rows["manifest frames"]["scenes"] == "3" and rows["manifest frames"]["max"] == "4"
    assert rows["source frames"]["max"] == "16"
    index = json.loads((root / "tokens" / "index.json").read_text())
    # Tokens per scene read back through the real shard reader: camera [T, 1, C] + patch [T, N, C] tokens.
    tokens = [s.camera.shape[0] * s.camera.shape[1] + s.patch.shape[0] * s.patch.shape[1]
              for shard in index["shards"] for s in read_shard(root / "tokens" / shard["file"])]
    assert len(tokens) == 3
    assert int(rows["geometry tokens"]["min"]) == min(tokens) and int(rows["geometry tokens"]["max"]) == max(tokens)

    shards = {r["shards"].strip("`"): r for r in table(section(text, "Shards"))}
    assert int(shards["tokens"]["files"]) == index["num_shards"]
    assert int(shards["tokens"]["samples"]) == index["num_samples"]
    assert float(shards["tokens"]["total MB"]) == pytest.approx(
        sum(s["size_bytes"] for s in index["shards"]) / 1e6, abs=0.006)
    # Every training-split question of the packed scenes is in the training shards.
    train_questions = sum(len(v) for k, v in qa_records(root).items() if k.endswith("/train"))
    assert int(shards["train_shards"]["samples"]) == 2
    assert int(shards["train_shards"]["questions"]) == train_questions


def test_failures_and_route_links(report, built_root):
    root, text = report
    failures = table(section(text, "Failures by cause"))
    ingest = [r for r in failures if r["stage"] == "ingest"]
    assert ingest == [{"stage": "ingest", "error type": "InputError", "rows": "1",
                       "scenes": f"scannet/{built_root.broken_scene}"}]
    routes = section(text, "Routes")
    plots = sorted((root / "routes" / "plots").glob("*/*.png"))
    links = LINK_RE.findall(routes)
    assert len(links) == len(plots) >= 1
    assert sorted((root / "report" / link).resolve() for link in links) == [p.resolve() for p in plots]


def test_rerun_is_byte_identical(report):
    root, text = report
    plots = {p.name: p.read_bytes() for p in sorted((root / "report" / "plots").glob("*.png"))}
    assert main(["stats", "--root", str(root)]) == 0
    assert (root / "report" / "report.md").read_text(encoding="utf-8") == text
    assert {p.name: p.read_bytes() for p in sorted((root / "report" / "plots").glob("*.png"))} == plots


def test_out_folder_and_stale_plots(built_root, tmp_path):
    root = built_root.copy(tmp_path / "root")
    out = tmp_path / "elsewhere" / "rep"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "old_plot.png").write_bytes(b"stale")
    assert main(["stats", "--root", str(root), "--out", str(out)]) == 0
    text = (out / "report.md").read_text(encoding="utf-8")
    assert not (out / "plots" / "old_plot.png").exists()
    assert not (root / "report").exists()
    for link in IMAGE_RE.findall(text) + LINK_RE.findall(section(text, "Routes")):
        assert (out / link).is_file(), link


def test_malformed_qa_file_is_named(built_root, tmp_path, capsys):
    root = built_root.copy(tmp_path / "root")
    path = root / "qa" / "vsibench" / "train.jsonl"
    n = len(path.read_text().splitlines())
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"truncated": \n')
    assert main(["stats", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and f"line {n + 1}" in err
    assert not (root / "report" / "report.md").exists()


def test_empty_root_gets_a_report_without_plots(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert main(["stats", "--root", str(root)]) == 0
    text = (root / "report" / "report.md").read_text(encoding="utf-8")
    assert "No QA files" in text and "No ingested scenes." in text and "No error rows." in text
    assert not IMAGE_RE.findall(text)
    assert not (root / "report" / "plots").exists()
    rows = table(section(text, "Stages"))
    assert [r["stage"] for r in rows] == ["ingest", "extract", "graph", "routes", "qa", "pack", "train", "predict",
                                          "eval"]
    assert [r["state"] for r in rows] == ["not run"] * 9
