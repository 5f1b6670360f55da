"""The training loop: resume reproduces an uninterrupted run, checkpoints are complete and guarded, the loader is
deterministic and skips exactly, the command trains and predicts for the scorer, and Ray Train splits the shards."""
import json
import math
import shutil

import pytest
import torch

from pipeline.cli import main as cli_main
from pipeline.core.errors import InputError
from pipeline.core.shards import ShardRecord, read_index, write_index
from workers.trainer.tokenizer import ByteTokenizer
from workers.trainer.data import ShardStream, list_train_shards, make_loader
from workers.trainer.model import ModelConfig
from workers.trainer.train import TrainConfig, lr_at, newest_checkpoint, train


def _config(root, out, **kw) -> TrainConfig:
    base = dict(train_dir=str(root.path / "train_shards"), out_dir=str(out), model=ModelConfig.tiny(), steps=4,
                micro_batch=2, grad_accum=2, save_every=2, lr=1e-3, shuffle_buffer=4)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_warms_up_then_follows_a_cosine():
    assert lr_at(0, 100, 1.0, 0.03) == pytest.approx(1 / 3)
    assert lr_at(2, 100, 1.0, 0.03) == pytest.approx(1.0)
    assert lr_at(3, 100, 1.0, 0.03) == pytest.approx(1.0)
    assert lr_at(3 + 97 // 2, 100, 1.0, 0.03) == pytest.approx(0.5 * (1 + math.cos(math.pi * (97 // 2) / 97)))
    assert lr_at(99, 100, 1.0, 0.03) < 1e-3


def test_resume_after_a_stop_reproduces_the_uninterrupted_losses(packed_root, tmp_path):
    clean = train(_config(packed_root, tmp_path / "clean"))
    assert len(clean["losses"]) == 4 and all(math.isfinite(x) for x in clean["losses"])
    stopped = train(_config(packed_root, tmp_path / "resumed", steps_this_run=2))
    assert stopped["step"] == 2
    # Debris of a save that was killed half-way must be ignored.
    (tmp_path / "resumed" / "checkpoints" / "step_000004.tmp").mkdir()
    assert newest_checkpoint(tmp_path / "resumed").name == "step_000002"
    resumed = train(_config(packed_root, tmp_path / "resumed"))
    assert stopped["losses"] + resumed["losses"] == pytest.approx(clean["losses"], abs=1e-6, rel=0)
    final = newest_checkpoint(tmp_path / "resumed")
    assert final.name == "step_000004"
    assert {p.name for p in final.iterdir()} == {
        "adapter_model.safetensors", "adapter_config.json", "non_lora_trainables.safetensors", "optimizer.safetensors",
        "optimizer.json", "rng_rank_000.safetensors", "config.json", "progress.json"}
    progress = json.loads((final / "progress.json").read_text())
    assert progress["step"] == 4 and progress["micro_batches"] == 8 and progress["seed"] == 0
    log = [json.loads(line) for line in (tmp_path / "clean" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all({"loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s"} <= set(r) for r in steps)
    assert [r["loss"] for r in steps] == pytest.approx(clean["losses"], abs=1e-6)


def test_resume_refuses_another_model_data_or_recipe(packed_root, tmp_path):
    out = tmp_path / "run"
    train(_config(packed_root, out, steps=1, grad_accum=1))
    with pytest.raises(InputError, match="model"):
        train(_config(packed_root, out, steps=1, grad_accum=1, model=ModelConfig.tiny(tiny_seed=3)))
    with pytest.raises(InputError, match="lr"):
        train(_config(packed_root, out, steps=1, grad_accum=1, lr=5e-4))
    other = tmp_path / "other_shards"
    shutil.copytree(packed_root.path / "train_shards", other)
    index = read_index(other)
    records = [ShardRecord(s["file"], tuple(s["keys"]), s["size_bytes"], s["sha256"]) for s in index["shards"][:2]]
    write_index(other, records, index["identity"])
    with pytest.raises(InputError, match="data"):
        train(_config(packed_root, out, steps=1, grad_accum=1, train_dir=str(other)))


def _ids(batches):
    return [b["ids"] for b in batches]


def test_loader_is_deterministic_and_skips_exactly_with_workers(packed_root):
    shards, _ = list_train_shards(packed_root.path / "train_shards")
    kwargs = dict(tokenizer=ByteTokenizer(), micro_batch=2, seed=1, shuffle_buffer=3)
    stream = iter(ShardStream(shards, **kwargs))
    single = [next(stream) for _ in range(8)]
    assert len({i for b in _ids(single) for i in b}) == 12     # 16 draws over 12 questions: every one appears
    again = iter(ShardStream(shards, skip_batches=5, **kwargs))
    assert _ids([next(again) for _ in range(3)]) == _ids(single[5:])
    torch.testing.assert_close(next(iter(ShardStream(shards, skip_batches=5, **kwargs)))["geometry_tokens"],
                               single[5]["geometry_tokens"])
    timed = next(iter(ShardStream(shards, time_instruction=True, **kwargs)))
    text = ByteTokenizer().decode([i for i in timed["input_ids"][0].tolist() if i >= 0])
    # 4 scene frames 0.5 s apart last 4 x 0.5 = 2 s (frames / fps, as LLaVA-Video); 2 of them are sampled.
    assert "The video lasts for 2.00 seconds, and 2 frames are uniformly sampled from it. These frames are located " \
           "at 0.00s,1.50s.Please answer" in text
    loader = iter(make_loader(shards, num_workers=2, **kwargs))
    two = [next(loader) for _ in range(6)]
    loader = iter(make_loader(shards, num_workers=2, skip_batches=3, **kwargs))
    assert _ids([next(loader) for _ in range(3)]) == _ids(two[3:])


def test_train_command_trains_and_writes_predictions_the_scorer_reads(packed_root, tmp_path):
    from pipeline.core.layout import DatasetRoot

    root = DatasetRoot(tmp_path / "root")
    shutil.copytree(packed_root.path, root.path)
    out = tmp_path / "cli"
    argv = ["train", "--root", str(root.path), "--tiny", "--steps", "2", "--grad-accum", "1", "--micro-batch", "2",
            "--out", str(out), "--predict", "--max-new-tokens", "3"]
    assert cli_main(argv + ["--export", str(tmp_path / "export")]) == 0
    predictions = root.predictions_dir / "vsibench_val.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    questions = [json.loads(line) for line in (root.qa_dir / "vsibench" / "val.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(q["id"] for q in questions)
    assert all(isinstance(r["prediction"], str) for r in rows)
    assert (tmp_path / "export" / "non_lora_trainables.bin").is_file()
    assert cli_main(["eval", "--questions", str(root.qa_dir / "vsibench" / "val.jsonl"),
                     "--predictions", str(predictions), "--out", str(tmp_path / "scores.json")]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["missing"] == 0
    # Done runs and predictions are skipped on a rerun; another recipe is refused until --rebuild.
    before = predictions.read_bytes()
    assert cli_main(argv) == 0 and predictions.read_bytes() == before
    assert cli_main(argv[:-2] + ["--lr", "1e-3"]) == 2


@pytest.mark.slow  # ~45 s on a loaded 2-core machine: two Ray Train worker processes import torch/transformers
def test_two_ray_train_workers_read_different_shards(packed_root, tmp_path, ray_local):
    from workers.trainer.train import train_ray

    config = _config(packed_root, tmp_path / "ray", steps=2, grad_accum=1)
    result = train_ray(config, workers=2)
    assert result.metrics["step"] == 2 and math.isfinite(result.metrics["loss"])
    traces = [json.loads((tmp_path / "ray" / "ranks" / f"rank_{r:03d}.json").read_text()) for r in (0, 1)]
    shards = [set(t["shards"]) for t in traces]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    all_shards, _ = list_train_shards(packed_root.path / "train_shards")
    assert shards[0] | shards[1] == set(all_shards)
    counts = json.loads((packed_root.path / "train_shards" / "qa_counts.json").read_text())
    for trace in traces:    # every example a rank saw comes from a scene in its own shards
        mine = {key for path in trace["shards"] for key in counts[path.rsplit("/", 1)[-1]]}
        assert trace["examples"] and {e.split("/")[0] for e in trace["examples"]} <= mine
    final = newest_checkpoint(tmp_path / "ray")
    assert final.name == "step_000002"
    assert (final / "rng_rank_000.safetensors").is_file() and (final / "rng_rank_001.safetensors").is_file()
    with pytest.raises(InputError, match="2 ranks"):       # a 2-rank checkpoint does not resume on 1 rank
        train(config)


def test_steps_per_epoch_follow_the_smallest_rank():
    from workers.trainer.data import rank_shards, steps_per_epoch

    shards = ["s0.tar", "s1.tar", "s2.tar", "s3.tar", "s4.tar"]
    questions = {"s0.tar": 50, "s1.tar": 10, "s2.tar": 30, "s3.tar": 10, "s4.tar": 40}
    assert rank_shards(shards, 0, 2) == ["s0.tar", "s2.tar", "s4.tar"]
    assert rank_shards(shards, 1, 2) == ["s1.tar", "s3.tar"]
    assert steps_per_epoch(questions, shards, 2, 4) == 20 // 4          # rank 1 holds 20 questions, rank 0 120
    assert steps_per_epoch(questions, shards, 1, 4) == 140 // 4
    with pytest.raises(InputError, match="fewer than"):
        steps_per_epoch(questions, shards, 2, 32)


@pytest.mark.slow  # ~60 s: three 2-worker Ray Train runs
def test_fsdp_on_two_ray_workers_resumes_exactly(packed_root, tmp_path, ray_local):
    from workers.trainer.train import train_ray

    base = dict(steps=2, grad_accum=2, micro_batch=1, save_every=1, shuffle_buffer=2, parallel="fsdp")
    train_ray(_config(packed_root, tmp_path / "clean", **base), workers=2)
    train_ray(_config(packed_root, tmp_path / "resumed", steps_this_run=1, **base), workers=2)
    train_ray(_config(packed_root, tmp_path / "resumed", **base), workers=2)

    def losses(folder):
        return [json.loads(line)["loss"] for line in (folder / "train_log.jsonl").read_text().splitlines()
                if '"loss"' in line]

    assert len(losses(tmp_path / "clean")) == 2
    assert losses(tmp_path / "resumed") == pytest.approx(losses(tmp_path / "clean"), abs=1e-6, rel=0)
    # The gathered checkpoint holds the full trainables: it loads into a fresh single-process model.
    from workers.trainer.model import build_model, load_trainables

    load_trainables(build_model(ModelConfig.tiny()), newest_checkpoint(tmp_path / "resumed"))
