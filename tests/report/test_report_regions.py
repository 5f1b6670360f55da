"""The report's region-prompt section on a root built by the real stages: its numbers equal counts recomputed here
from the regionbench JSON lines and every graph's ``regions.parquet`` (pyarrow and pycocotools directly), the drawn
prompts show the mask colour exactly where the masks are, also on a frame resized as the token JPEGs are, and roots
without region data, without frames or with a malformed record degrade as documented."""
from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from pipeline.cli import main
from pipeline.stages import report_regions
from pipeline.stages.report_regions import (MASK_ALPHA, PROMPT_PANELS, REGION_COLOURS, PromptPanel, draw_prompt,
                                            plot_region_prompts)
from pipeline.stages.run import ledgers_of
from report_helpers import IMAGE_RE, section

REGION_PLOTS = ("region_covisibility.png", "region_mask_areas.png", "region_prompts.png")


def table(text: str) -> list[dict[str, str]]:
    """The first Markdown table of ``text`` (its consecutive ``|`` lines) as rows keyed by the header."""
    block = next(chunk for chunk in text.split("\n\n") if chunk.strip().startswith("|")).strip().splitlines()
    header = [c.strip() for c in block[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in block[2:]]


def region_records(root: Path) -> dict[str, list[dict]]:
    return {p.stem: [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted((root / "qa" / "regionbench").glob("*.jsonl"))}


def tables_after(text: str, marker: str) -> list[dict[str, str]]:
    return table(text.split(marker, 1)[1])


def decoded(rle: dict) -> np.ndarray:
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def test_question_counts_and_covisibility_match_the_jsonl(report):
    root, text = report
    records = region_records(root)
    assert records.get("train") and records.get("val")
    body = section(text, "Region prompts")
    all_records = [r for recs in records.values() for r in recs]
    assert body.startswith(f"\n{len(all_records)} regionbench questions with "
                           f"{sum(len(r['regions']) for r in all_records)} region prompts")

    per_split = Counter((r["task"], split) for split, recs in records.items() for r in recs)
    regions_per_task = defaultdict(list)
    for r in all_records:
        regions_per_task[r["task"]].append(len(r["regions"]))
    rows = table(body)
    assert [row["task"] for row in rows] == sorted(regions_per_task)
    for row in rows:
        n = regions_per_task[row["task"]]
        assert int(row["train"]) == per_split[(row["task"], "train")]
        assert int(row["val"]) == per_split[(row["task"], "val")]
        assert int(row["total"]) == len(n)
        assert float(row["regions / question (mean)"]) == pytest.approx(np.mean(n), abs=0.005)
        assert int(row["regions / question (max)"]) == max(n)

    # The co-visibility histogram: questions with 2+ regions by max_regions_per_frame.
    multi = [r for r in all_records if len(r["regions"]) >= 2]
    assert multi, "the built root should have questions with 2+ regions"
    histogram = defaultdict(Counter)
    for r in multi:
        histogram[r["task"]][r["max_regions_per_frame"]] += 1
    rows = tables_after(body, "Co-visibility of the questions with 2+ regions")
    assert [row["task"] for row in rows] == sorted(histogram)
    values = sorted({v for h in histogram.values() for v in h})
    for row in rows:
        h = histogram[row["task"]]
        assert int(row["questions"]) == sum(h.values())
        assert {v: int(row[str(v)]) for v in values} == {v: h.get(v, 0) for v in values}
        never_all = sum(1 for r in multi if r["task"] == row["task"] and r["max_regions_per_frame"] < len(r["regions"]))
        assert float(row["never all in one frame (%)"]) == pytest.approx(100 * never_all / sum(h.values()), abs=0.05)
        assert float(row["no two in one frame (%)"]) == pytest.approx(100 * h.get(1, 0) / sum(h.values()), abs=0.05)
    never_all = sum(1 for r in multi if r["max_regions_per_frame"] < len(r["regions"]))
    no_two = sum(1 for r in multi if r["max_regions_per_frame"] == 1)
    assert (f"**{never_all} of {len(multi)}** questions with 2+ regions ({100 * never_all / len(multi):.1f}%)"
            in body)
    assert f"; {no_two} ({100 * no_two / len(multi):.1f}%) about instances no two of which share a frame" in body


def test_mask_areas_and_sources_match_regions_parquet(report):
    root, text = report
    body = section(text, "Region prompts")
    paths = sorted((root / "graph").glob("*/*/regions.parquet"))
    assert len(paths) == 3           # the three ingested scenes (the fourth failed ingest)
    regions = [row for p in paths for row in pq.read_table(p).to_pylist()]
    all_areas = np.array([r["visible_pixels"] / (r["mask_height"] * r["mask_width"]) for r in regions])
    # The prompts' areas from their masks, decoded.
    prompt_areas = np.array([decoded(g["rle"]).mean() for recs in region_records(root).values() for r in recs
                             for g in r["regions"]])
    rows = {row["masks"]: row for row in tables_after(body, "Mask areas")}
    quantiles = ("q0", "q10", "q25", "q50", "q75", "q90", "q100")
    for label, areas in ((f"all regions (regions.parquet, {len(paths)} scenes)", all_areas),
                         ("prompts used by the questions", prompt_areas)):
        row = rows[label]
        assert int(row["count"]) == len(areas)
        want = np.quantile(100 * areas, [int(q[1:]) / 100 for q in quantiles])
        assert [float(row[q]) for q in quantiles] == pytest.approx(want, abs=0.0051)

    sources = Counter(r["source"] for r in regions)
    truncated = Counter(r["source"] for r in regions if r["truncated"])
    rows = {row["source"]: row for row in tables_after(body, "Region sources over")}
    assert set(rows) == set(sources) | {"all"}
    for source, n in sources.items():
        assert int(rows[source]["regions"]) == n
        assert int(rows[source]["truncated"]) == truncated[source]
        assert float(rows[source]["share (%)"]) == pytest.approx(100 * n / len(regions), abs=0.05)
    assert int(rows["all"]["regions"]) == len(regions)
    assert int(rows["all"]["truncated"]) == sum(truncated.values())
    assert f"Region sources over {len(regions)} regions in {len(paths)} scenes" in body


def test_region_plots_are_linked_valid_images(report):
    root, text = report
    linked = {Path(link).name for link in IMAGE_RE.findall(section(text, "Region prompts"))}
    assert linked == set(REGION_PLOTS)
    for name in REGION_PLOTS:
        with Image.open(root / "report" / "plots" / name) as im:
            assert im.format == "PNG" and im.mode == "RGBA" and im.size[0] >= 300 and im.size[1] >= 200
            assert "Software" not in im.info


def drawn_questions(root: Path) -> list[tuple[str, dict]]:
    """The questions region_prompts.png draws, chosen here by the documented rule: benchmark splits first, file
    order, the first with 2+ regions whose instances never all share a frame, whole questions up to the budget."""
    chosen, used = [], 0
    records = region_records(root)
    for split in ("val", "train"):
        for r in records.get(split, []):
            n = len(r["regions"])
            if n >= 2 and r["max_regions_per_frame"] < n and used + n <= PROMPT_PANELS:
                chosen.append((split, r))
                used += n
    return chosen


def rendered(fig) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].astype(int)


def pixel_at(fig, pixels: np.ndarray, ax, x: float, y: float) -> np.ndarray:
    """The rendered RGB at data point (x, y) of ``ax`` (display origin bottom-left, image rows top-down)."""
    dx, dy = ax.transData.transform((x, y))
    return pixels[int(pixels.shape[0] - dy), int(dx)]


def check_panel(fig, pixels, ax, frame: np.ndarray, rle: dict, bbox: list[int], index: int) -> None:
    """Mask pixels (away from the mask's edge) show the blend of the frame and Region [index]'s colour; pixels
    below and right of the box (away from its outline and label) show the frame untouched. The frame's outermost
    pixels are not sampled: the axes' spines are drawn over them."""
    from scipy.ndimage import binary_erosion

    mask = decoded(rle)
    assert frame.shape[:2] == mask.shape
    colour = np.array(REGION_COLOURS[index])
    interior = np.zeros_like(mask)
    interior[1:-1, 1:-1] = True
    inner = np.argwhere(binary_erosion(mask, iterations=1) & interior)
    assert len(inner), "no mask interior to sample"
    for row, col in inner[:: max(1, len(inner) // 40)]:
        want = np.round((1 - MASK_ALPHA) * frame[row, col] + MASK_ALPHA * colour)
        assert np.abs(pixel_at(fig, pixels, ax, col, row) - want).max() <= 2, (row, col)
    x0, y0, x1, y1 = bbox
    outside = [(r, c) for r, c in np.argwhere(interior) if r > y1 + 2 or c > x1 + 2]
    for row, col in outside[:: max(1, len(outside) // 40)]:
        assert np.abs(pixel_at(fig, pixels, ax, col, row) - frame[row, col]).max() <= 2, (row, col)


def test_region_prompts_png_shows_each_mask_where_it_is(report):
    from matplotlib import style

    from pipeline.core.frames import decode_colors
    from pipeline.core.scene import manifest_frames, read_manifest
    from pipeline.core.schemas import FRAMES_SCHEMA, read_table
    from pipeline.stages.report import collect

    root, text = report
    chosen = drawn_questions(root)
    assert chosen and chosen[0][0] == "val"
    regions = [(split, r, i, g) for split, r in chosen for i, g in enumerate(r["regions"])]
    with style.context("default"):
        fig = plot_region_prompts(collect(ledgers_of(root)).regions)
        pixels = rendered(fig)
    with Image.open(root / "report" / "plots" / "region_prompts.png") as im:
        assert np.array_equal(np.asarray(im.convert("RGB")).astype(int), pixels)   # the figure that was saved
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(regions)
    scene_dirs = {f"{p.parent.name}_{p.name}": p for p in (root / "scenes").glob("*/*")}
    for ax, (split, record, i, region) in zip(axes, regions):
        assert ax.get_title().startswith(f"{record['scene_key']} {split} #{record['id']} {record['task']}\n"
                                         f"Region [{i}] {region['category']}, frame rank {region['frame_rank']}")
        scene_dir = scene_dirs[record["scene_key"]]
        frames = manifest_frames(read_table(scene_dir / "frames.parquet", FRAMES_SCHEMA), read_manifest(scene_dir))
        frame = decode_colors(frames.slice(region["frame_rank"], 1))[0]   # built root: no token JPEGs
        check_panel(fig, pixels, ax, frame, region["rle"], region["bbox_xyxy"], i)
    assert "frames from the ingested scenes' sources" in section(text, "Region prompts")


def test_prompt_on_a_resized_frame_lines_up_with_the_stored_frame():
    """A token JPEG is the stored frame squashed to 384x384: the mask and box, given at the stored resolution, must
    land on the same content. Here the resized image is the stored frame enlarged by whole pixels (nearest), so
    each stored pixel's centre shows exactly that pixel's colour, tinted or not."""
    from matplotlib import style

    from pipeline.core.masks import encode_mask
    from pipeline.stages.report_figures import new_figure

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)          # 16 x 12 stored frame
    mask = np.zeros((12, 16), bool)
    mask[3:9, 5:12] = True
    mask[4, 4] = True
    rle = encode_mask(mask)
    squashed = stored[(np.arange(384) * 12 // 384)[:, None], (np.arange(384) * 16 // 384)[None, :]]
    panel = PromptPanel("t", 1, rle, [4, 3, 11, 8], squashed, report_regions.SOURCE_TOKENS)
    with style.context("default"):
        fig, axes = new_figure(4, 3)
        draw_prompt(axes[0, 0], panel)
        fig.tight_layout()
        pixels = rendered(fig)
    check_panel(fig, pixels, axes[0, 0], stored, rle, [4, 3, 11, 8], 1)


def test_root_without_regions_has_no_section(built_root, tmp_path):
    root = built_root.copy(tmp_path / "root")
    shutil.rmtree(root / "qa" / "regionbench")
    assert main(["stats", "--root", str(root)]) == 0
    text = (root / "report" / "report.md").read_text(encoding="utf-8")
    body = section(text, "Region prompts")        # regions.parquet is still there: masks and sources, no questions
    assert "No regionbench questions" in body and "Region sources over" in body
    assert "Co-visibility" not in body
    plots = {p.name for p in (root / "report" / "plots").glob("region_*.png")}
    assert plots == {"region_mask_areas.png"}

    for path in (root / "graph").glob("*/*/regions.parquet"):
        path.unlink()
    assert main(["stats", "--root", str(root)]) == 0
    text = (root / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Region prompts" not in text
    assert not list((root / "report" / "plots").glob("region_*.png"))    # the earlier report's are gone
    assert "## Numeric answers" in text and "## Frames and tokens per scene" in text


def test_frames_that_cannot_be_read_leave_out_the_drawing_only(built_root, tmp_path, monkeypatch):
    from pipeline.core import frames
    from pipeline.core.errors import InputError

    def unreadable(table):
        raise InputError("raw.sens", "moved away")

    monkeypatch.setattr(frames, "decode_colors", unreadable)
    root = built_root.copy(tmp_path / "root")
    assert main(["stats", "--root", str(root)]) == 0
    text = (root / "report" / "report.md").read_text(encoding="utf-8")
    body = section(text, "Region prompts")
    assert "Co-visibility" in body and "Region prompts drawn" not in body
    assert {p.name for p in (root / "report" / "plots").glob("region_*.png")} == {"region_covisibility.png",
                                                                                  "region_mask_areas.png"}


def test_malformed_region_record_is_named(built_root, tmp_path, capsys):
    root = built_root.copy(tmp_path / "root")
    path = root / "qa" / "regionbench" / "val.jsonl"
    record = json.loads(path.read_text().splitlines()[0])
    record["regions"] = []
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    assert main(["stats", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "without regions" in err


def test_prompts_drawn_on_token_jpegs_are_scaled_to_the_stored_frame(built_root, tmp_path):
    """With frames in the token shards (extract --with-frames: squashed squares), the panels show those JPEGs,
    placed over the stored frame's pixel coordinates, with the stored-resolution mask resized onto them."""
    import tarfile

    from matplotlib import style

    from pipeline.stages.report import collect

    root = built_root.copy(tmp_path / "root")
    assert main(["extract", "--root", str(root), "--random-tiny", "--size", "112", "--squash-size", "112",
                 "--with-frames", "--local", "--rebuild"]) == 0
    assert main(["stats", "--root", str(root)]) == 0
    text = (root / "report" / "report.md").read_text(encoding="utf-8")
    assert "frames from the token shards' JPEGs" in section(text, "Region prompts")
    with style.context("default"):
        fig = plot_region_prompts(collect(ledgers_of(root)).regions)
    regions = [(r, i, g) for _, r in drawn_questions(root) for i, g in enumerate(r["regions"])]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(regions)
    index = json.loads((root / "tokens" / "index.json").read_text())
    for ax, (record, i, region) in zip(axes, regions):
        shard = next(s["file"] for s in index["shards"] if record["scene_key"] in s["keys"])
        with tarfile.open(root / "tokens" / shard) as tar:
            member = tar.extractfile(f"{record['scene_key']}.frame_{region['frame_rank']:03d}.jpg")
            jpeg = Image.open(member)
            jpeg.load()
        frame = np.asarray(jpeg.convert("RGB")).astype(float)
        height, width = region["rle"]["size"]
        assert frame.shape[:2] != (height, width)                       # a resized frame, not the stored one
        # Each JPEG pixel takes the stored pixel under its centre: row r of h covers stored rows [r, r + 1) * H / h,
        # its centre (2r + 1) H / 2h (exact integers; a centre on a stored pixel edge belongs to the pixel after it).
        rows = (2 * np.arange(frame.shape[0]) + 1) * height // (2 * frame.shape[0])
        cols = (2 * np.arange(frame.shape[1]) + 1) * width // (2 * frame.shape[1])
        mask = decoded(region["rle"])[rows[:, None], cols[None, :]]
        colour = np.array(REGION_COLOURS[i], float)
        want = np.where(mask[:, :, None], (1 - MASK_ALPHA) * frame + MASK_ALPHA * colour, frame)
        [image] = ax.get_images()
        assert np.abs(np.asarray(image.get_array(), float) - want).max() <= 0.5
        assert image.get_extent() == pytest.approx([-0.5, width - 0.5, height - 0.5, -0.5])


def test_stale_question_files_are_named(built_root, tmp_path):
    root = built_root.copy(tmp_path / "root")
    train_keys = json.loads((root / "qa" / "scenes.json").read_text())["train"]
    train_scene = next(s for s in built_root.scene_ids if f"scannet_{s}" in train_keys)
    assert main(["graph", "--root", str(root), "--scenes", train_scene, "--rebuild", "--local"]) == 0
    assert main(["stats", "--root", str(root)]) == 0
    body = section((root / "report" / "report.md").read_text(encoding="utf-8"), "Region prompts")
    assert "**Stale question files** (made from graphs rebuilt since: their prompts may not match " \
           "`regions.parquet`): `regionbench/train`." in body
