"""A small, exact PLY reader/writer (ascii and binary, little/big endian) built on numpy structured dtypes.

Reads every vertex property (so ScanNet200's ``label``/``instance_id`` or colour fields survive) and triangle
faces from ``property list <count> <index> vertex_indices``. trimesh drops unknown vertex properties, which the
readers need, hence this module.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.atomic import atomic_open
from pipeline.core.errors import InputError

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass
class PlyMesh:
    vertex: dict[str, np.ndarray]                      # property name -> [V] array
    faces: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))  # [F, 3] int64

    @property
    def vertices(self) -> np.ndarray:
        """[V, 3] float64 positions."""
        return np.stack([self.vertex["x"], self.vertex["y"], self.vertex["z"]], axis=1).astype(np.float64)

    @property
    def colors(self) -> np.ndarray | None:
        """[V, 3] uint8 RGB, or None."""
        if all(k in self.vertex for k in ("red", "green", "blue")):
            return np.stack([self.vertex["red"], self.vertex["green"], self.vertex["blue"]], axis=1).astype(np.uint8)
        return None


def _parse_header(fh, path: Path):
    if fh.readline().strip() != b"ply":
        raise InputError(path, "not a PLY file (missing 'ply' magic)")
    fmt, elements = None, []
    while True:
        line = fh.readline()
        if not line:
            raise InputError(path, "truncated PLY header (no end_header)")
        parts = line.decode("ascii", "replace").split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property":
            if not elements:
                raise InputError(path, "PLY property before any element")
            elements[-1][2].append(tuple(parts[1:]))
        elif parts[0] == "end_header":
            break
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise InputError(path, f"unsupported PLY format {fmt!r}")
    return fmt, elements


def read_ply(path: str | os.PathLike) -> PlyMesh:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "mesh file not found")
    with open(path, "rb") as fh:
        fmt, elements = _parse_header(fh, path)
        endian = ">" if fmt == "binary_big_endian" else "<"
        data = fh.read()
    vertex: dict[str, np.ndarray] = {}
    faces = np.zeros((0, 3), np.int64)
    if fmt == "ascii":
        tokens = data.split()
        pos = 0
        for name, count, props in elements:
            if any(p[0] == "list" for p in props):
                rows = []
                for _ in range(count):
                    row = []
                    for p in props:
                        if p[0] == "list":
                            n = int(tokens[pos]); pos += 1
                            row.append([int(t) for t in tokens[pos:pos + n]]); pos += n
                        else:
                            pos += 1
                    rows.append(row)
                if name == "face":
                    faces = _triangulate([r[0] for r in rows], path)
            else:
                width = len(props)
                block = np.array(tokens[pos:pos + count * width], dtype=np.float64)
                if block.size != count * width:
                    raise InputError(path, f"truncated PLY: element {name!r} needs {count} rows")
                block = block.reshape(count, width)
                pos += count * width
                if name == "vertex":
                    vertex = {p[1]: block[:, i].astype(_TYPES[p[0]]) for i, p in enumerate(props)}
        return PlyMesh(vertex, faces)

    offset = 0
    for name, count, props in elements:
        lists = [p for p in props if p[0] == "list"]
        if not lists:
            dtype = np.dtype([(p[1], endian + _TYPES[p[0]]) for p in props])
            need = dtype.itemsize * count
            if offset + need > len(data):
                raise InputError(path, f"truncated PLY: element {name!r} needs {need} bytes at offset {offset}")
            arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
            offset += need
            if name == "vertex":
                vertex = {n: arr[n].astype(arr.dtype[n].newbyteorder("=")) for n in arr.dtype.names}
            continue
        if len(props) != 1:
            raise InputError(path, f"PLY element {name!r}: only a single list property is supported")
        _, count_t, index_t, _ = lists[0]
        cdt, idt = np.dtype(endian + _TYPES[count_t]), np.dtype(endian + _TYPES[index_t])
        # Fast path: all faces are triangles -> a fixed-stride record.
        tri = np.dtype([("n", cdt), ("i", idt, (3,))])
        if count and offset + tri.itemsize * count <= len(data):
            arr = np.frombuffer(data, dtype=tri, count=count, offset=offset)
            if np.all(arr["n"] == 3):
                if name == "face":
                    faces = arr["i"].astype(np.int64)
                offset += tri.itemsize * count
                continue
        polys = []
        for _ in range(count):
            if offset + cdt.itemsize > len(data):
                raise InputError(path, f"truncated PLY: element {name!r}")
            n = int(np.frombuffer(data, cdt, 1, offset)[0]); offset += cdt.itemsize
            if offset + n * idt.itemsize > len(data):
                raise InputError(path, f"truncated PLY: element {name!r}")
            polys.append(np.frombuffer(data, idt, n, offset).tolist()); offset += n * idt.itemsize
        if name == "face":
            faces = _triangulate(polys, path)
    if "x" not in vertex:
        raise InputError(path, "PLY has no vertex positions")
    return PlyMesh(vertex, faces)


def _triangulate(polys, path: Path) -> np.ndarray:
    tris = []
    for poly in polys:
        if len(poly) < 3:
            raise InputError(path, f"degenerate PLY face with {len(poly)} vertices")
        tris += [(poly[0], poly[i], poly[i + 1]) for i in range(1, len(poly) - 1)]
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def write_ply(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray | None = None,
              colors: np.ndarray | None = None, extra: dict[str, np.ndarray] | None = None,
              face_count_type: str = "uchar") -> None:
    """Binary little-endian PLY: float x,y,z; optional uchar red,green,blue; extra per-vertex fields
    (name -> array, dtype kept); triangle faces as ``property list <face_count_type> int vertex_indices``."""
    vertices = np.asarray(vertices)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    extra = extra or {}
    inverse = {v: k for k, v in _TYPES.items() if k in ("char", "uchar", "short", "ushort", "int", "uint", "float", "double")}
    for name, arr in extra.items():
        fields.append((name, np.dtype(arr.dtype).newbyteorder("<").str))
    rec = np.zeros(len(vertices), dtype=fields)
    rec["x"], rec["y"], rec["z"] = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    if colors is not None:
        rec["red"], rec["green"], rec["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    for name, arr in extra.items():
        rec[name] = arr
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(vertices)}"]
    for name, dt in fields:
        header.append(f"property {inverse[np.dtype(dt).str.lstrip('<>|=')]} {name}")
    faces = np.zeros((0, 3), np.int64) if faces is None else np.asarray(faces)
    header += [f"element face {len(faces)}", f"property list {face_count_type} int vertex_indices", "end_header"]
    face_rec = np.zeros(len(faces), dtype=[("n", "<" + _TYPES[face_count_type]), ("i", "<i4", (3,))])
    face_rec["n"], face_rec["i"] = 3, faces
    with atomic_open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(rec.tobytes())
        fh.write(face_rec.tobytes())
