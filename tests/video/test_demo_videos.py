"""The demo's video path: generated scenes written as a plain video folder (VSI-Bench's <dataset>/<scene_name>.mp4 and
a phone clip stored sideways) and our benchmark records written as a published question file that names them."""
import numpy as np
import pytest

from pipeline.cli import main as cli_main
from pipeline.core.frames import decode_colors
from pipeline.core.layout import DatasetRoot, scene_key, video_scene_id
from pipeline.core.qa_records import load_benchmark_questions, video_name, write_benchmark_questions
from pipeline.core.scene import manifest_frames, read_manifest, read_scene, video_name_index
from pipeline.sources.scannetpp_writer import scannetpp_scene_id
from pipeline.sources.synthetic import generate_scenes
from pipeline.sources.video_writer import write_video_folder


def test_generated_scenes_as_a_video_folder_and_a_question_file(tmp_path):
    scenes = generate_scenes(2, seed=3, num_frames=8, width=64, height=48)
    names = write_video_folder(scenes, tmp_path / "videos")
    ids = [scannetpp_scene_id(s.name) for s in scenes]
    assert names == [f"scannetpp/{ids[0]}", f"scannetpp/{ids[1]}", f"phone/{ids[0]}_sideways"]
    assert cli_main(["ingest", "--dataset", "video", "--raw", str(tmp_path / "videos"), "--out",
                     str(tmp_path / "root"), "--local", "--num-frames", "4"]) == 0
    root = DatasetRoot(tmp_path / "root")
    index = video_name_index(root)
    assert index == {name: scene_key("video", video_scene_id(name)) for name in names}
    # The sideways phone clip comes out as the scene was rendered; the plain one too.
    for name in (names[0], names[2]):
        scene_dir = root.scene_dir("video", video_scene_id(name))
        frames = manifest_frames(read_scene(scene_dir, with_mesh=False).frames, read_manifest(scene_dir))
        ranks = frames.column("frame_index").to_pylist()
        for rank, img in zip(ranks, decode_colors(frames)):
            assert img.shape == scenes[0].rgb[rank].shape
            assert np.abs(img.astype(int) - scenes[0].rgb[rank]).mean() < 6

    records = [{"id": 1, "dataset": "scannetpp", "scene_name": ids[1], "question_type": "object_counting",
                "question": "How many chair(s) are in this room?", "options": None, "ground_truth": "2",
                "bench": "vsibench", "qa_key": "x/object_counting/0000", "scene_key": "scannetpp_x"}]
    path = write_benchmark_questions(records, tmp_path / "test.parquet")
    questions, problems = load_benchmark_questions(path)
    assert problems == [] and set(questions[0]) == {"id", "dataset", "scene_name", "question_type", "question",
                                                    "options", "ground_truth"}
    assert video_name(questions[0]) in index
    first = path.read_bytes()
    assert write_benchmark_questions(records, tmp_path / "test.parquet").read_bytes() == first
    with pytest.raises(ValueError, match="JSON lines"):
        write_benchmark_questions([{**records[0], "ground_truth": 2.5}], tmp_path / "vsti.parquet")


def test_video_folders_are_reproducible_to_the_byte(tmp_path):
    """The same scenes give the same video files, in this process and in another one: the demo's video tokens are
    compared by sha256 across runs (x264's lookahead made them differ before)."""
    import hashlib
    import subprocess
    import sys

    def digests(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    scenes = generate_scenes(1, seed=2, mounted=True)
    for run in ("a", "b"):
        write_video_folder(scenes, tmp_path / run)
    script = ("import sys; from pathlib import Path; from pipeline.sources.synthetic import generate_scenes; "
              "from pipeline.sources.video_writer import write_video_folder; "
              "write_video_folder(generate_scenes(1, seed=2, mounted=True), Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "c")], check=True)
    first = digests(tmp_path / "a")
    assert len(first) == 2 and digests(tmp_path / "b") == first and digests(tmp_path / "c") == first
