import os

import numpy as np
import pytest
import trimesh

from pipeline.core.atomic import atomic_open, write_json, read_json
from pipeline.cli import available_commands, main
from pipeline.core.errors import InputError
from pipeline.core.ply import read_ply, write_ply


def test_ply_roundtrip_keeps_extra_properties_and_trimesh_agrees(tmp_path):
    mesh = trimesh.creation.box(extents=[1, 2, 3])
    colors = np.arange(len(mesh.vertices) * 3, dtype=np.uint8).reshape(-1, 3)
    inst = np.arange(len(mesh.vertices), dtype=np.int32) - 1
    write_ply(tmp_path / "m.ply", mesh.vertices, mesh.faces, colors, {"instance_id": inst})
    back = read_ply(tmp_path / "m.ply")
    np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.colors, colors)
    np.testing.assert_array_equal(back.vertex["instance_id"], inst)
    # An independent parser reads the same geometry.
    other = trimesh.load(tmp_path / "m.ply", process=False)
    np.testing.assert_allclose(other.vertices, mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(other.faces, mesh.faces)


def test_ascii_ply_with_quads(tmp_path):
    (tmp_path / "a.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    mesh = read_ply(tmp_path / "a.ply")
    assert mesh.vertices.shape == (4, 3)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3]])


def test_truncated_ply_names_file(tmp_path):
    write_ply(tmp_path / "m.ply", np.zeros((10, 3)), np.zeros((4, 3), int))
    data = (tmp_path / "m.ply").read_bytes()
    (tmp_path / "t.ply").write_bytes(data[: len(data) - 60])
    with pytest.raises(InputError, match="t.ply.*truncated"):
        read_ply(tmp_path / "t.ply")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as fh:
            fh.write(b"partial")
            raise RuntimeError("crash mid-write")
    assert read_json(target) == {"a": 1}
    assert os.listdir(tmp_path) == ["out.json"]


def test_cli_lists_stages_and_each_has_help(capsys):
    assert main([]) == 2
    listed = capsys.readouterr().out
    commands = available_commands()
    assert "ingest" in commands and "demo" in commands
    for command in commands:
        assert command in listed
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        assert "usage: vlm3r-data " + command in capsys.readouterr().out
