import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import ErrorRow, read_errors, record_errors
from pipeline.core.schemas import (FRAMES_SCHEMA, OBJECTS_SCHEMA, SchemaError, column_as_array, read_table,
                              table_from_columns, write_table)
from pipeline.core.scene import box_aabb, frames_columns, objects_table, upright_box, uniform_ranks


def test_objects_roundtrip_and_rows_as_axes(tmp_path):
    # ARKitScenes fixture box: rows-as-axes gives an upright 0.6 x 0.4 x 0.9 box (datasets.md §6.3).
    t = objects_table([7], ["chair"], ["chair"], [[1.25, 1.25, 0.45]], [[0.9, 0.6, 0.4]],
                      [[0, 0, 1, 1, 0, 0, 0, 1, 0]], [0])
    write_table(tmp_path / "o.parquet", t, OBJECTS_SCHEMA)
    back = read_table(tmp_path / "o.parquet", OBJECTS_SCHEMA)
    np.testing.assert_allclose(column_as_array(back, "aabb_min"), [[0.95, 1.05, 0.0]], atol=1e-12)
    np.testing.assert_allclose(column_as_array(back, "aabb_max"), [[1.55, 1.45, 0.9]], atol=1e-12)
    assert column_as_array(back, "instance_id").tolist() == [7]
    # Deterministic bytes for the same table.
    write_table(tmp_path / "o2.parquet", t, OBJECTS_SCHEMA)
    assert (tmp_path / "o.parquet").read_bytes() == (tmp_path / "o2.parquet").read_bytes()


def test_schema_violations_are_named(tmp_path):
    cols = frames_columns(2)
    del cols["fx"]
    with pytest.raises(SchemaError, match="missing \\['fx'\\]"):
        table_from_columns(FRAMES_SCHEMA, cols)
    cols = frames_columns(2)
    cols["camera_to_world"] = np.zeros((2, 12))
    with pytest.raises(SchemaError, match="camera_to_world"):
        table_from_columns(FRAMES_SCHEMA, cols)
    # A parquet file with a wrongly typed column is refused on read, naming the column.
    good = table_from_columns(FRAMES_SCHEMA, frames_columns(2))
    bad = good.set_column(good.schema.get_field_index("width"), "width", pa.array([1.5, 2.5]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match="'width'"):
        read_table(tmp_path / "bad.parquet", FRAMES_SCHEMA)


def test_box_aabb_yawed_box():
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    lo, hi = box_aabb([1.25, 1.25, 0.45], [0.6, 0.4, 0.9], [[c, s, 0], [-s, c, 0], [0, 0, 1]])
    np.testing.assert_allclose(lo, [0.890192, 0.926795, 0.0], atol=1e-6)
    np.testing.assert_allclose(hi, [1.609808, 1.573205, 0.9], atol=1e-6)


def test_upright_box_recovers_yawed_box():
    rng = np.random.default_rng(0)
    yaw = 0.4
    axes = np.array([[np.cos(yaw), np.sin(yaw), 0], [-np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * [1.0, 0.3, 0.4]
    pts = np.concatenate([corners, rng.uniform(-1, 1, (200, 3)) * [1.0, 0.3, 0.4]]) @ axes + [2, 3, 0.4]
    centroid, lengths, got_axes = upright_box(pts)
    np.testing.assert_allclose(centroid, [2, 3, 0.4], atol=1e-9)
    np.testing.assert_allclose(lengths, [2.0, 0.6, 0.8], atol=1e-9)
    assert abs(abs(got_axes[0] @ axes[0]) - 1) < 1e-9


def test_uniform_ranks_skip_invalid_frames():
    valid = np.ones(100, bool)
    valid[[0, 50, 99]] = False
    rows = uniform_ranks(valid, 32)
    assert len(rows) == 32 and valid[rows].all() and np.all(np.diff(rows) > 0)
    assert rows[0] == 1 and rows[-1] == 98
    assert uniform_ranks(np.array([True, False, True]), 32).tolist() == [0, 2]
    assert uniform_ranks(np.zeros(5, bool), 32).tolist() == []


def test_errors_table_replaces_rows_of_rerun(tmp_path):
    path = tmp_path / "errors.parquet"
    record_errors(path, "ingest", [("scannet", "a"), ("scannet", "b")],
                  [ErrorRow("ingest", "scannet", "a", "InputError", "x.sens: truncated", "x.sens")])
    record_errors(path, "graph", [("scannet", "b")], [ErrorRow("graph", "scannet", "b", "ValueError", "nan box")])
    assert {(r.stage, r.scene_id) for r in read_errors(path)} == {("ingest", "a"), ("graph", "b")}
    record_errors(path, "ingest", [("scannet", "a")], [])  # a successful rerun clears the row
    assert {(r.stage, r.scene_id) for r in read_errors(path)} == {("graph", "b")}


def test_input_error_survives_pickling():
    import pickle

    from pipeline.core.errors import InputError

    err = pickle.loads(pickle.dumps(InputError("/data/x.sens", "truncated: wanted 10 bytes")))
    assert isinstance(err, InputError) and err.path == "/data/x.sens" and str(err) == "/data/x.sens: truncated: wanted 10 bytes"
