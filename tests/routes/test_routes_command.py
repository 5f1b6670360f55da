"""``vlm3r-data routes`` on a real dataset root: outputs, error rows for bad scenes, reruns, 1 vs 2 Ray workers."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pipeline.core.atomic import read_json
from pipeline.cli import main
from pipeline.core.errors import read_errors
from pipeline.core.layout import DatasetRoot
from pipeline.core.schemas import ROUTES_SCHEMA, read_table
from scene_graph.navigation import habitat_available, scenes
from scene_graph.navigation.base import face_geometry

GOOD = ("synth0000", "synth0001")


def build_root(root: Path, write_scene) -> None:
    for k, sid in enumerate(GOOD):
        lay = scenes.multi_room(k)
        write_scene(root, "scannet", sid, lay.vertices, lay.faces, lay.objects)
    lay = scenes.multi_room(2)
    # y-up mesh (habitat / glTF convention) ingested by mistake
    write_scene(root, "scannet", "bad_yup", lay.vertices[:, [0, 2, 1]] * [1.0, 1.0, -1.0], lay.faces, lay.objects)
    # no floor: only the walls of the scan
    _, normals, _ = face_geometry(lay.vertices, lay.faces)
    write_scene(root, "scannet", "bad_nofloor", lay.vertices, lay.faces[normals[:, 2] < 0.5], lay.objects)
    # fewer than three unique objects
    two = lay.objects.filter(pc.is_in(lay.objects.column("instance_id"), pa.array([0, 1], pa.int64())))
    write_scene(root, "arkitscenes", "bad_fewobjects", lay.vertices, lay.faces, two)
    # two rooms without a door, two unique objects each
    free = np.ones((6, 13), bool)
    free[:, 6] = False
    rooms = scenes.layout(free, [], 0.5, [("bed", (0.5, 0.5, 0.3)), ("tv", (2.5, 2.5, 0.3)),
                                          ("sofa", (4.0, 0.5, 0.3)), ("sink", (6.0, 2.5, 0.3))])
    write_scene(root, "arkitscenes", "bad_disconnected", rooms.vertices, rooms.faces, rooms.objects)


def outputs(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in (root / "routes").rglob("*") if p.is_file() and p.suffix in (".parquet", ".png"))
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_routes_command_outputs_errors_reruns_and_workers(tmp_path, layout_scene_writer, ray_local):
    root = tmp_path / "root"
    build_root(root, layout_scene_writer)
    if not habitat_available():   # refused up front with a clear message, not one error row per scene
        assert main(["routes", "--root", str(root), "--backend", "habitat"]) == 2
        assert not (root / "routes").exists()
    assert main(["routes", "--root", str(root), "--local", "--backend", "grid", "--reversed"]) == 1

    # Good scenes: a validated routes table, a decodable PNG, a marker with counts.
    for sid in GOOD:
        table = read_table(root / "routes" / "scannet" / f"{sid}.parquet", ROUTES_SCHEMA)
        assert table.num_rows > 0 and set(table.column("scene_id").to_pylist()) == {sid}
        assert min(table.column("num_turns").to_pylist()) >= 1
        with Image.open(root / "routes" / "plots" / "scannet" / f"{sid}.png") as img:
            assert img.format == "PNG" and img.size == (500, 500)
        marker = read_json(root / "routes" / "scannet" / f"{sid}_DONE.json")
        assert marker["stats"]["routes"] == table.num_rows and marker["stats"]["backend"] == "grid"

    # Bad scenes: one error row each, naming the file and the problem; no outputs for them.
    errors = {(r.dataset, r.scene_id): r for r in read_errors(DatasetRoot(root).errors_path)}
    assert set(errors) == {("scannet", "bad_yup"), ("scannet", "bad_nofloor"),
                           ("arkitscenes", "bad_fewobjects"), ("arkitscenes", "bad_disconnected")}
    assert "not z-up" in errors[("scannet", "bad_yup")].message
    assert errors[("scannet", "bad_yup")].path.endswith("bad_yup/mesh.ply")
    assert "no floor" in errors[("scannet", "bad_nofloor")].message
    assert "unique category" in errors[("arkitscenes", "bad_fewobjects")].message
    assert "disconnected rooms" in errors[("arkitscenes", "bad_disconnected")].message
    assert all(r.stage == "routes" and r.error_type == "InputError" for r in errors.values())
    assert not (root / "routes" / "scannet" / "bad_yup.parquet").exists()
    counts = read_json(root / "info.json")["stages"]["routes"]["counts"]
    assert (counts["done"], counts["failed"], counts["units"]) == (2, 4, 6)

    first = outputs(root)
    # An up-to-date rerun skips every good scene; a rebuild writes the same bytes.
    assert main(["routes", "--root", str(root), "--local", "--backend", "grid", "--reversed"]) == 1
    assert read_json(root / "info.json")["stages"]["routes"]["counts"]["skipped"] == 2
    assert main(["routes", "--root", str(root), "--local", "--backend", "grid", "--reversed", "--rebuild"]) == 1
    assert outputs(root) == first

    # Another configuration is refused, naming the field; the outputs stay.
    assert main(["routes", "--root", str(root), "--local", "--backend", "grid"]) == 2
    assert outputs(root) == first

    # The same root processed by 2 Ray workers gives byte-identical routes and plots.
    ray_root = tmp_path / "ray_root"
    shutil.copytree(root / "scenes", ray_root / "scenes")
    assert main(["routes", "--root", str(ray_root), "--workers", "2", "--backend", "grid", "--reversed"]) == 1
    assert outputs(ray_root) == first
    assert len(read_errors(DatasetRoot(ray_root).errors_path)) == 4
