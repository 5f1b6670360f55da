"""A folder of videos through ingest, extract, predict (tiny model) and eval, on a question file in lmms-eval's
layout, with the command line a user would type."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from video_factories import marked_image, write_video

from pipeline.cli import main as cli_main
from pipeline.core.atomic import write_json
from pipeline.core.errors import read_errors
from pipeline.core.layout import DatasetRoot
from pipeline.core.tokens import iter_samples
from workers.trainer.model import ModelConfig, build_model, save_trainables
from workers.trainer.train import TrainConfig

CUT3R_TINY_WIDTH = 32          # the random tiny CUT3R's token width (its dec_embed_dim)


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """torch on one thread (see tests/conftest.py)."""


def _adapter(folder, width: int) -> None:
    """A checkpoint folder as train writes one: the trainables (peft adapter, fusion, projector) and config.json."""
    torch.manual_seed(0)
    config = TrainConfig(train_dir="unused", out_dir=str(folder), model=ModelConfig.tiny(d_spatial=width))
    save_trainables(build_model(config.model), folder)
    write_json(folder / "config.json", config.to_dict())


def _question(qid, dataset, scene, qtype, question, truth, options=None):
    return {"id": qid, "dataset": dataset, "scene_name": scene, "question_type": qtype, "question": question,
            "options": options, "ground_truth": truth}


def test_video_folder_to_tokens_predictions_and_scores(tmp_path):
    raw, root_path = tmp_path / "videos", tmp_path / "root"
    write_video(raw / "arkitscenes" / "41069025.mp4", [marked_image(i) for i in range(12)])
    portrait = [np.ascontiguousarray(np.rot90(marked_image(i, 96, 64), 1)) for i in range(7)]
    write_video(raw / "phone" / "IMG_0001.MOV", portrait, rotation_degrees=-90)        # a phone held upright
    (raw / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 then nothing useful")

    assert cli_main(["ingest", "--dataset", "video", "--raw", str(raw), "--out", str(root_path), "--local",
                     "--num-frames", "8"]) == 1                                         # broken.mp4 failed
    root = DatasetRoot(root_path)
    rows = read_errors(root.errors_path)
    assert {(r.scene_id, r.error_type, r.severity) for r in rows} == {("broken", "InputError", "error"),
                                                                     ("phone__IMG_0001", "short_video", "warning")}

    assert cli_main(["extract", "--root", str(root_path), "--random-tiny", "--local", "--size", "64",
                     "--squash-size", "64", "--with-frames"]) == 0
    samples = {s.key: s for s in iter_samples(root.tokens_dir)}
    assert sorted(samples) == ["video_arkitscenes__41069025", "video_phone__IMG_0001"]
    phone = samples["video_phone__IMG_0001"]
    assert phone.num_frames == 7 and phone.images()[0].shape == (64, 64, 3)
    assert phone.images()[0][:8, :8].min() > 200                    # upright: the marker is top-left
    assert all(row["camera_to_world"] is None or all(v is None for v in row["camera_to_world"])
               for row in phone.frames) and not any(row["valid"] for row in phone.frames)

    questions = [
        _question(1, "arkitscenes", "41069025", "object_counting", "How many chair(s) are in this room?", "2"),
        _question(2, "arkitscenes", "41069025", "object_rel_distance", "Which of these objects is the closest to "
                  "the tv?", "C", ["A. chair", "B. sofa", "C. bed", "D. lamp"]),
        _question(3, "phone", "IMG_0001", "room_size_estimation", "What is the size of this room (in square "
                  "meters)?", "12.5"),
        _question(4, "scannet", "scene0011_00", "object_counting", "How many table(s) are in this room?", "3"),
        _question(5, "phone", "IMG_0001", "object_height", "How tall is the lamp?", "1.5"),
    ]
    question_file = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([{**q, "source": "generated"} for q in questions]), question_file)
    adapter = tmp_path / "adapter"
    _adapter(adapter, CUT3R_TINY_WIDTH)

    predictions = tmp_path / "pred.jsonl"
    argv = ["predict", "--root", str(root_path), "--questions", str(question_file), "--adapter", str(adapter),
            "--out", str(predictions), "--max-new-tokens", "4", "--no-progress"]
    assert cli_main(argv) == 1                    # a question without its video and one lmms-eval cannot ask
    answered = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["id"] for r in answered] == [1, 2, 3] and all(isinstance(r["prediction"], str) for r in answered)
    first = predictions.read_bytes()
    assert cli_main(argv) == 1 and predictions.read_bytes() == first          # same inputs, same bytes
    predict_rows = {(r.error_type, r.dataset, r.scene_id) for r in read_errors(root.errors_path)
                    if r.stage == "predict"}
    assert predict_rows == {("MissingVideo", "scannet", "scene0011_00"), ("UnknownColumns", "", ""),
                            ("UnknownQuestionType", "phone", "IMG_0001")}

    scores = tmp_path / "scores.json"
    score = ["eval", "--questions", str(question_file), "--predictions", str(predictions), "--out", str(scores)]
    assert cli_main(score) == 1 and not scores.exists()      # strict: two questions have no prediction
    assert cli_main(score + ["--allow-missing"]) == 0         # scored as wrong, as lmms-eval's worst case
    report = json.loads(scores.read_text())
    assert report["missing"] == 2 and report["counts"] == {"object_counting": 2, "object_height": 1,
                                                           "object_rel_distance": 1, "room_size_estimation": 1}
    assert 0.0 <= report["overall"] <= 100.0
