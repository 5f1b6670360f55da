import pytest

from pipeline.cli import available_commands, main
from pipeline.commands.run import plan
from pipeline.config import ConfigError, load_config, stage_flags


def _write(tmp_path, text):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_config_overrides_and_validation(tmp_path):
    path = _write(tmp_path, "root: /r\nworkers: 4\ndatasets:\n  - {name: scannet, raw: /raw/sn}\n"
                            "stages:\n  extract: {batch_videos: 8}\n")
    config = load_config(path, ["extract.num_gpus=2", "workers=16", "skip=[train]"])
    assert config.workers == 16 and config.skip == ("train",)
    assert config.stages["extract"] == {"batch_videos": 8, "num_gpus": 2}
    assert stage_flags({"batch_videos": 8, "with_frames": True, "local": False, "scenes": ["a", "b"]}) == \
        ["--batch-videos", "8", "--with-frames", "--scenes", "a", "b"]
    with pytest.raises(ConfigError, match="datasets\\[\\].name: 'scanet'"):
        load_config(_write(tmp_path, "root: /r\ndatasets:\n  - {name: scanet, raw: /x}\n"))
    with pytest.raises(ConfigError, match="unknown top-level key\\(s\\) \\['wokers'\\]"):
        load_config(_write(tmp_path, "root: /r\nwokers: 3\n"))
    with pytest.raises(ConfigError, match="stages: unknown stage"):
        load_config(_write(tmp_path, "root: /r\nstages: {extrct: {}}\n"))
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(_write(tmp_path, "root: /r\n"), ["workers"])


def test_plan_passes_only_options_a_stage_accepts(tmp_path):
    config = load_config(_write(tmp_path, "root: /r\nseed: 7\ndatasets:\n  - {name: scannetpp, raw: /raw, stream: dslr}\n"))
    steps = dict(plan(config, available_commands()))
    assert steps["ingest scannetpp"] == ["ingest", "--dataset", "scannetpp", "--raw", "/raw", "--out", "/r",
                                         "--stream", "dslr", "--workers", "2"]
    assert "--seed" not in steps["ingest scannetpp"]
    if "qa" in steps:
        assert steps["qa"][:3] == ["qa", "--root", "/r"] and "7" in steps["qa"]


def test_run_executes_stages_and_reports_bad_stage_options(tmp_path, capsys):
    from pipeline.sources.scannet_writer import write_scannet
    from pipeline.sources.synthetic import generate_scene

    write_scannet(generate_scene(5), tmp_path / "raw")
    path = _write(tmp_path, f"root: {tmp_path / 'root'}\nlocal: true\ndatasets:\n"
                            f"  - {{name: scannet, raw: {tmp_path / 'raw'}}}\nstages:\n  ingest: {{num_frames: 8}}\n")
    assert main(["run", "--config", str(path), "--only", "ingest"]) == 0
    assert "ingest scannet  ok" in capsys.readouterr().out
    assert (tmp_path / "root" / "scenes" / "scannet").is_dir()
    assert main(["run", "--config", str(path), "--only", "ingest", "ingest.num_frmes=3"]) == 2
    assert "refused its configuration" in capsys.readouterr().err


def test_train_gets_its_own_workers_not_the_scene_pool(tmp_path):
    config = load_config(_write(tmp_path, "root: /r\nworkers: 8\nstages:\n  train: {tiny: true, workers: 2}\n"))
    steps = dict(plan(config, available_commands()))
    assert steps["train"] == ["train", "--root", "/r", "--seed", "0", "--tiny", "--workers", "2"]
    assert steps["graph"][-2:] == ["--workers", "8"]
