"""Ingest end to end on generated scenes written in the real raw formats, on a real local Ray."""
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.core.errors import read_errors
from pipeline.core.layout import DatasetRoot
from pipeline.core.scene import read_manifest, read_scene
from pipeline.core.schemas import column_as_array
from pipeline.sources.scannet_writer import write_scannet
from pipeline.sources.scannetpp_writer import write_scannetpp
from pipeline.sources.synthetic import generate_scene


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    base = tmp_path_factory.mktemp("raw")
    scenes = [generate_scene(seed) for seed in (1, 2)]
    ids = {"scannet": [write_scannet(s, base / "scannet") for s in scenes],
           "scannetpp": [write_scannetpp(s, base / "scannetpp") for s in scenes]}
    return base, scenes, ids


def _tree_bytes(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_ingest_on_ray_matches_in_process_and_resumes(ray_local, raw, tmp_path, capsys):
    base, scenes, ids = raw
    for dataset in ("scannet", "scannetpp"):
        assert main(["ingest", "--dataset", dataset, "--raw", str(base / dataset), "--out", str(tmp_path / "ray"),
                     "--workers", "2"]) == 0
        assert main(["ingest", "--dataset", dataset, "--raw", str(base / dataset), "--out", str(tmp_path / "local"),
                     "--local"]) == 0
    ray_scenes = _tree_bytes(tmp_path / "ray" / "scenes")
    assert ray_scenes == _tree_bytes(tmp_path / "local" / "scenes")  # byte-identical whatever the executor
    root = DatasetRoot(tmp_path / "ray")
    assert len(root.scenes()) == 4
    for (dataset, scene_id), truth in zip(root.scenes("scannet"), scenes):
        scene = read_scene(root.scene_dir(dataset, scene_id))
        manifest = read_manifest(root.scene_dir(dataset, scene_id))
        assert manifest.num_rows == 32 and column_as_array(manifest, "valid").all()
        assert column_as_array(manifest, "rank").tolist() == list(range(32))
        # The generator's lost frame is never in the manifest.
        assert not set(truth.invalid_frames) & set(column_as_array(manifest, "frame_index").tolist())
        c2w = column_as_array(manifest, "camera_to_world").reshape(-1, 4, 4)
        np.testing.assert_allclose(c2w, truth.camera_to_world[column_as_array(manifest, "frame_index")], atol=1e-6)
        assert scene.objects.num_rows == len(truth.objects)
    # A rerun skips the complete scenes and changes nothing.
    capsys.readouterr()
    assert main(["ingest", "--dataset", "scannet", "--raw", str(base / "scannet"), "--out", str(tmp_path / "ray"),
                 "--local"]) == 0
    assert "0 done, 2 up to date of 2 scenes" in capsys.readouterr().out
    assert _tree_bytes(tmp_path / "ray" / "scenes") == ray_scenes


def test_bad_scene_is_an_error_row_and_others_are_ingested(raw, tmp_path, capsys):
    base, _, ids = raw
    import shutil

    broken = tmp_path / "raw"
    shutil.copytree(base / "scannet", broken)
    sens = broken / "scans" / ids["scannet"][0] / f"{ids['scannet'][0]}.sens"
    sens.write_bytes(sens.read_bytes()[: sens.stat().st_size // 3])
    status = main(["ingest", "--dataset", "scannet", "--raw", str(broken), "--out", str(tmp_path / "root"), "--local"])
    assert status == 1
    assert "1 done, 0 up to date, 1 failed of 2 scenes" in capsys.readouterr().out
    (row,) = read_errors(tmp_path / "root" / "errors.parquet")
    assert (row.stage, row.dataset, row.scene_id) == ("ingest", "scannet", ids["scannet"][0])
    assert sens.name in row.message and "truncated" in row.message
    assert DatasetRoot(tmp_path / "root").scenes() == [("scannet", ids["scannet"][1])]
    # Repairing the input and rerunning clears the error row.
    shutil.copy(base / "scannet" / "scans" / ids["scannet"][0] / sens.name, sens)
    assert main(["ingest", "--dataset", "scannet", "--raw", str(broken), "--out", str(tmp_path / "root"),
                 "--local"]) == 0
    assert read_errors(tmp_path / "root" / "errors.parquet") == []


def test_unknown_scene_and_wrong_option_are_refused(raw, tmp_path, capsys):
    base, _, _ = raw
    assert main(["ingest", "--dataset", "scannet", "--raw", str(base / "scannet"), "--out", str(tmp_path),
                 "--scenes", "scene9999_00", "--local"]) == 2
    assert "scene9999_00" in capsys.readouterr().err
    assert main(["ingest", "--dataset", "scannet", "--raw", str(base / "scannet"), "--out", str(tmp_path),
                 "--stream", "dslr"]) == 2
