"""Plain video files as scenes: the benchmarks' evaluation videos and in-the-wild phone videos.

Layout: every file under ``RAW`` whose suffix is ``.mp4``, ``.mov``, ``.mkv`` or ``.webm`` (any case), in any
sub-folder; hidden files and folders (``.*``, e.g. macOS ``._clip.mov`` copies) are skipped. A video is named by its
path relative to ``RAW`` without the suffix (``arkitscenes/41069025``: VSI-Bench's ``<dataset>/<scene_name>``); its
scene id is :func:`pipeline.core.layout.video_scene_id` of that name (``arkitscenes__41069025``, shard key
``video_arkitscenes__41069025``), and ``scene.json`` records the name, so a question's ``<dataset>/<scene_name>``
finds the scene again (:func:`pipeline.core.scene.video_name_index`). Two files with one name (``a.mp4`` and
``a.mov``) are an error for that name.

Ingest decodes every frame once with PyAV and keeps the decodable ones:

- frames: the decodable frames in presentation order, with their container timestamps (pts x time base, seconds),
  as they are (a variable frame rate is recorded, never resampled);
- rotation: the container's display matrix (or a legacy ``rotate`` tag) becomes ``rotate_k``, so portrait phone
  videos come out upright; a rotation quarter turns cannot undo (a mirror, 45 degrees) is an error;
- a corrupt tail: decoding stops at the first error (or the file ends before the frames or duration the container
  declares); the frames before it are kept and what was lost is recorded;
- no pose, intrinsics, depth or mesh (``CanonicalScene.poses = "none"``); the frame manifest samples N frames
  uniformly among the decodable frames (all of them when there are fewer, which is recorded).

Everything recorded goes to ``scene.json`` under ``video`` (``notes``: kind and message), and :func:`ingest_notes`
lists what ingest reports as warning rows. Plain videos are evaluation inputs: their split is ``test``, so they never
enter training shards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from pipeline.core.errors import InputError
from pipeline.core.frames import VIDEO_SUFFIXES, frame_quarter_turns, rotate_tag
from pipeline.core.layout import VIDEO_DATASET, video_scene_id
from pipeline.core.scene import POSES_NONE, CanonicalScene, frames_columns, objects_table
from pipeline.core.schemas import FRAMES_SCHEMA, table_from_columns

DATASET = VIDEO_DATASET
SPLIT = "test"
# Frame intervals may differ by rounding to the time base; beyond 1 % of the median interval the rate is variable.
VARIABLE_RATE_TOLERANCE = 0.01


# ---- decoding every frame once (I/O) -----------------------------------------------------------------------------

@dataclass
class VideoProbe:
    """What one decoding pass over a video found."""

    path: str
    container: str                        # demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str
    stored_width: int                     # pixels as stored (before rotate_k)
    stored_height: int
    rotate_k: int                         # np.rot90 count that makes frames upright
    rotation_source: str                  # "display_matrix", "rotate_tag" or "none"
    time_base: Fraction
    frame_pts: list[int | None]           # decodable frames in presentation order (None: no timestamp)
    packet_pts: list[int]                 # pts of every packet read, sorted (the decoders' frame numbering)
    packets_read: int                     # video packets the file delivered (an edit list's discarded ones too)
    declared_frames: int | None           # frame count the container declares (None when it does not)
    declared_duration_s: float | None     # duration the container declares
    stop_error: str | None = None         # the error decoding stopped at, if any
    dropped: list[str] = field(default_factory=list)  # frames the decoder output out of the packets' order

    @property
    def timestamps_s(self) -> np.ndarray:
        return np.array([np.nan if p is None else float(p * self.time_base) for p in self.frame_pts], np.float64)


def probe_video(path: str | Path) -> VideoProbe:
    """Decode every frame of ``path`` once (no colour conversion) and record what is decodable.

    Frames are kept while they match the packets' presentation order (frame n must be the packet with the n-th
    smallest pts, which is how decord and :mod:`pipeline.core.frames` number frames); decoding stops at the first
    error. Raises InputError for a file that is not a readable video, has no video stream or no decodable frame,
    or declares a rotation quarter turns cannot undo.
    """
    import av

    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(path, f"not a readable video: {exc}") from None
    with container:
        if not container.streams.video:
            raise InputError(path, "no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1    # one CPU per ingest task: parallelism comes from videos
        time_base = stream.time_base or Fraction(1, 1)
        packet_pts: list[int] = []
        packets_read = 0
        decoded: list[Any] = []           # pts of the decoded frames, in output order
        first: list[Any] = []             # the first frame and its rotation

        def take(frames: Iterable[Any]) -> None:
            for frame in frames:
                if not first:
                    first.append((frame, *_rotation(path, frame, stream)))
                decoded.append(frame.pts)

        stop_error = None
        try:
            for packet in container.demux(stream):
                if packet.size:
                    packets_read += 1
                    if not packet.is_discard and packet.pts is not None:
                        packet_pts.append(int(packet.pts))
                take(packet.decode())
        except (av.error.FFmpegError, OSError) as exc:
            stop_error = f"{type(exc).__name__}: {exc}"
            try:   # the frames still inside the decoder (reordering, threads) are decodable too
                take(stream.codec_context.decode(None))
            except (av.error.FFmpegError, OSError):
                pass
        if not first:
            raise InputError(path, "no decodable video frame" + (f" ({stop_error})" if stop_error else ""))
        first_frame, turns, source = first[0]
        declared_frames = int(stream.frames) or None
        duration = stream.duration * time_base if stream.duration else (
            Fraction(container.duration, 1_000_000) if container.duration else None)
        probe = VideoProbe(
            path=str(path), container=container.format.name, codec=stream.codec_context.name,
            stored_width=int(first_frame.width), stored_height=int(first_frame.height), rotate_k=turns,
            rotation_source=source, time_base=Fraction(time_base), frame_pts=[], packet_pts=sorted(packet_pts),
            packets_read=packets_read,
            declared_frames=declared_frames, declared_duration_s=None if duration is None else float(duration),
            stop_error=stop_error)
    probe.frame_pts, probe.dropped = _decodable_prefix(decoded, probe.packet_pts)
    if not probe.frame_pts:
        raise InputError(path, "no decodable video frame: " + "; ".join(probe.dropped))
    return probe


def _rotation(path: Path, frame: Any, stream: Any) -> tuple[int, str]:
    try:
        turns = frame_quarter_turns(frame, stream)
    except ValueError as exc:
        raise InputError(path, f"unsupported rotation: {exc}") from None
    from av.sidedata.sidedata import Type

    if any(side.type == Type.DISPLAYMATRIX for side in frame.side_data):
        return turns, "display_matrix"
    return turns, ("rotate_tag" if rotate_tag(stream) is not None else "none")


def _decodable_prefix(decoded: list[int | None], packet_pts: list[int]) -> tuple[list[int | None], list[str]]:
    """The decoded frames that are the first packets in presentation order, and what broke that order.

    Without pts anywhere the frames are numbered by decoding order alone (decoders then read sequentially)."""
    if all(p is None for p in decoded) and not packet_pts:
        return list(decoded), []
    kept: list[int | None] = []
    for i, pts in enumerate(decoded):
        if i >= len(packet_pts) or pts != packet_pts[i]:
            expected = packet_pts[i] if i < len(packet_pts) else None
            return kept, [f"frame {i}: decoder gave pts {pts}, the packets' presentation order has {expected}"]
        kept.append(pts)
    return kept, []


# ---- the canonical scene (pure) ----------------------------------------------------------------------------------

def video_notes(probe: VideoProbe) -> list[dict[str, str]]:
    """What ingest records about a video beyond its frames: a corrupt tail, a variable frame rate, missing
    timestamps. Each note has a ``kind`` and a ``message``."""
    notes = []
    n = len(probe.frame_pts)
    times = probe.timestamps_s
    lost = []
    if probe.stop_error:
        lost.append(f"decoding stopped at {probe.stop_error}")
    lost += probe.dropped
    if not probe.dropped and len(probe.packet_pts) > n:
        lost.append(f"{len(probe.packet_pts) - n} of the {len(probe.packet_pts)} frames read did not decode")
    if probe.declared_frames is not None and probe.declared_frames > probe.packets_read:
        lost.append(f"the container declares {probe.declared_frames} frames, the file holds {probe.packets_read}")
    finite = times[np.isfinite(times)]
    if probe.declared_frames is None and probe.declared_duration_s is not None and finite.size >= 2:
        period = float(np.median(np.diff(finite)))
        covered = float(finite[-1] - finite[0]) + period
        if probe.declared_duration_s > covered + 2 * period:
            lost.append(f"the container declares {probe.declared_duration_s:.3f} s, the decodable frames cover "
                        f"{covered:.3f} s")
    if lost:
        notes.append({"kind": "corrupt_tail", "message": f"{n} decodable frames kept; " + "; ".join(lost)})
    if not np.isfinite(times).all():
        notes.append({"kind": "no_timestamps", "message": f"{int((~np.isfinite(times)).sum())} of {n} frames have "
                                                          "no container timestamp"})
    elif n >= 3:
        steps = np.diff(times)
        median = float(np.median(steps))
        tick = float(probe.time_base)
        if (steps <= 0).any():
            notes.append({"kind": "unordered_timestamps", "message": "container timestamps do not increase"})
        elif float(steps.max() - steps.min()) > VARIABLE_RATE_TOLERANCE * median + tick:
            notes.append({"kind": "variable_frame_rate",
                          "message": f"frame intervals from {1000 * steps.min():.3f} to {1000 * steps.max():.3f} ms "
                                     f"(median {1000 * median:.3f} ms); container timestamps kept as they are"})
    return notes


def video_frames_table(probe: VideoProbe) -> pa.Table:
    """FRAMES_SCHEMA rows of the decodable frames: container timestamps, upright size, the video as colour source
    (offset = frame number), ``rotate_k``; no pose (NaN, invalid), no intrinsics (NaN), no depth."""
    n = len(probe.frame_pts)
    width, height = probe.stored_width, probe.stored_height
    if probe.rotate_k % 2:
        width, height = height, width
    cols = frames_columns(n)
    cols.update(timestamp=probe.timestamps_s, width=np.full(n, width, np.int32), height=np.full(n, height, np.int32),
                color_kind=["video"] * n, color_path=[probe.path] * n, color_offset=np.arange(n, dtype=np.int64),
                rotate_k=np.full(n, probe.rotate_k, np.int8))
    return table_from_columns(FRAMES_SCHEMA, cols)


def video_scene(probe: VideoProbe, name: str, relative_file: str, split: str = SPLIT) -> CanonicalScene:
    """The canonical scene of a probed video (no poses, mesh or objects)."""
    times = probe.timestamps_s
    finite = times[np.isfinite(times)]
    fps = None
    if finite.size >= 2 and finite[-1] > finite[0]:
        fps = round((finite.size - 1) / float(finite[-1] - finite[0]), 6)
    meta = {
        "video_source": {"kind": "video", "path": probe.path},
        "video": {
            "name": name, "file": relative_file, "container": probe.container, "codec": probe.codec,
            "stored_size": [probe.stored_width, probe.stored_height], "rotate_k": probe.rotate_k,
            "rotation_source": probe.rotation_source, "decodable_frames": len(probe.frame_pts),
            "declared_frames": probe.declared_frames, "declared_duration_s": probe.declared_duration_s,
            "average_fps": fps, "notes": video_notes(probe),
        },
    }
    empty = objects_table([], [], [], np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3, 3)), [])
    return CanonicalScene(dataset=DATASET, scene_id=video_scene_id(name), split=split,
                          frames=video_frames_table(probe), objects=empty, mesh_vertices=np.zeros((0, 3)),
                          mesh_faces=np.zeros((0, 3), np.int64), meta=meta, poses=POSES_NONE)


def ingest_notes(scene: CanonicalScene, manifest_frames: int, num_frames: int) -> list[dict[str, str]]:
    """What ingest reports as warning rows for a video scene: the reader's notes, and a manifest shorter than asked
    (every decodable frame taken)."""
    notes = list(scene.meta.get("video", {}).get("notes", []))
    if manifest_frames < num_frames:
        notes.append({"kind": "short_video", "message": f"{manifest_frames} decodable frames, fewer than the "
                                                        f"{num_frames} asked: all of them are in the manifest"})
    return notes


# ---- the reader --------------------------------------------------------------------------------------------------

def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def list_video_files(raw: Path) -> list[str]:
    """Relative paths (``/``-separated) of every video file under ``raw``, sorted; hidden entries skipped."""
    return sorted(_video_files(raw))


def _video_files(raw: Path) -> Iterator[str]:
    for path in Path(raw).rglob("*"):
        rel = path.relative_to(raw)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or not is_video_file(path):
            continue
        yield rel.as_posix()


def video_name(relative_file: str) -> str:
    """A video's name: its relative path without the suffix."""
    return relative_file[: -len(Path(relative_file).suffix)]


class VideoFolderReader:
    """A folder of plain videos (see the module docstring)."""

    name = DATASET
    layout = "<raw>/**/<name>.{mp4,mov,mkv,webm}: any folder of video files (the name is the path without suffix)"

    def looks_like(self, raw: Path) -> bool:
        """A folder with video files, and no scan release's layout (a ScanNet++ release holds rgb.mp4 files too)."""
        from pipeline.sources import READERS, get_reader

        if any(get_reader(d).looks_like(raw) for d in READERS if d != DATASET):
            return False
        return next(_video_files(raw), None) is not None

    def list_scenes(self, raw: Path, split: str | None = None) -> list[tuple[str, str]]:
        if split not in (None, SPLIT):
            return []
        ids = {video_scene_id(video_name(rel)) for rel in list_video_files(Path(raw))}
        return [(scene_id, SPLIT) for scene_id in sorted(ids)]

    def read_scene(self, raw: Path, scene_id: str, split: str) -> CanonicalScene:
        raw = Path(raw).absolute()
        files = self._files_of(raw, scene_id)
        if not files:
            raise InputError(raw, f"no video file with scene id {scene_id!r}")
        if len(files) > 1:
            raise InputError(raw / files[0], f"videos {files} share the name {video_name(files[0])!r} (scene id "
                                             f"{scene_id!r}); rename all but one")
        probe = probe_video(raw / files[0])
        return video_scene(probe, video_name(files[0]), files[0], split)

    @staticmethod
    def _files_of(raw: Path, scene_id: str) -> list[str]:
        """The video files whose name maps to ``scene_id``: the name read back from the id, looked up in its folder,
        else (an id with a hash, or a name that reads back to another one) every video listed."""
        name = scene_id.replace("__", "/")
        parent, stem = (raw / name).parent, (raw / name).name
        if parent.is_dir():
            found = sorted((Path(name).parent / p.name).as_posix() for p in parent.iterdir()
                           if p.is_file() and is_video_file(p) and p.name[: -len(p.suffix)] == stem)
            if found and video_scene_id(name) == scene_id:
                return found
        return [rel for rel in list_video_files(raw) if video_scene_id(video_name(rel)) == scene_id]


READER = VideoFolderReader()
