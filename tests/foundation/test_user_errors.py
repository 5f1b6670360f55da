"""A user's mistake never prints a traceback: every command with wrong arguments and bad paths, ingest on a
folder of another dataset, a read-only root and a disk that fills up all end in one clear line and exit 1 or 2."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exc:          # argparse's usage errors (exit 2) and --help (exit 0)
        status = exc.code if isinstance(exc.code, int) else 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, f"{argv}:\n{text}"
    return status, text


@pytest.fixture(scope="module")
def bad_paths(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    a_file = base / "a_file.txt"
    a_file.write_text("not a folder")
    empty = base / "empty_root"
    empty.mkdir()
    return {"missing": str(base / "missing"), "file": str(a_file), "empty": str(empty), "base": base}


def _cases(p: dict) -> list[list[str]]:
    """Wrong arguments and bad paths for every command."""
    cases = [[], ["nonsense"], ["--version"]]
    for command in COMMANDS:
        cases += [[command, "--no-such-option"], [command, "--help"]]
    for root in (p["missing"], p["file"], p["empty"]):
        cases += [
            ["ingest", "--dataset", "scannet", "--raw", root, "--out", str(p["base"] / "out")],
            ["ingest", "--dataset", "scannet", "--raw", p["empty"], "--out", root, "--local"],
            ["extract", "--root", root, "--random-tiny", "--local"],
            ["extract", "--root", root, "--checkpoint", p["file"], "--local"],
            ["graph", "--root", root, "--local"], ["routes", "--root", root, "--local"],
            ["qa", "--root", root, "--local"], ["pack", "--root", root], ["train", "--root", root, "--tiny"],
            ["eval", "--root", root], ["eval", "--questions", root, "--predictions", root],
            ["stats", "--root", root], ["status", "--root", root],
            ["export-meta", "--format", "vlm3r", "--root", root, "--out", str(p["base"] / "meta")],
            ["export-meta", "--format", "scannet200", "--root", root, "--out", str(p["base"] / "meta")],
            ["import-meta", "--format", "vsibench", "--scene-meta", root, "--out", str(p["base"] / "imp")],
            ["cut3r", "--checkpoint", root, "--inputs", root, "--out", str(p["base"] / "o.npz")],
            ["run", "--config", root],
        ]
    cases += [
        ["ingest", "--dataset", "scannet", "--raw", p["empty"], "--out", str(p["base"] / "o2"), "--num-frames", "0"],
        ["graph", "--root", p["empty"], "--depth-tolerance", "3"],
        ["qa", "--root", p["empty"], "--tasks", "nonsense"],
        ["routes", "--root", p["empty"], "--max-routes", "-1"],
        ["extract", "--root", p["empty"], "--random-tiny", "--size", "33"],
        ["extract", "--root", p["empty"], "--weights", p["file"]],
        ["run", "--config", p["file"]],
    ]
    return cases


def test_every_command_with_wrong_arguments_and_bad_paths(bad_paths, capsys):
    for argv in _cases(bad_paths):
        status, text = _run(capsys, argv)
        if argv and argv[-1] in ("--help", "--version"):
            assert status == 0
            continue
        if argv and argv[0] in ("stats", "status") and argv[-1] == bad_paths["empty"]:
            assert status == 0          # an empty root has a (blank) report and status; not a mistake
            continue
        assert status in (1, 2), (argv, status, text)
        assert text.strip(), argv                         # something says what is wrong


def test_ingest_on_another_datasets_folder_says_what_it_looks_like(tmp_path, capsys):
    from pipeline.sources.arkitscenes_writer import write_arkitscenes
    from pipeline.sources.scannetpp_writer import write_scannetpp
    from pipeline.sources.synthetic import generate_scene

    scene = generate_scene(5, num_frames=6, width=48, height=36)
    write_scannetpp(scene, tmp_path / "scannetpp")
    write_arkitscenes(scene, tmp_path / "arkitscenes")
    out = str(tmp_path / "root")
    status, text = _run(capsys, ["ingest", "--dataset", "scannet", "--raw", str(tmp_path / "scannetpp"), "--out", out])
    assert status == 2 and "no scannet scene found" in text and "Expected the scannet layout: <raw>/scans/" in text
    assert "has the layout of scannetpp (--dataset scannetpp)" in text
    status, text = _run(capsys, ["ingest", "--dataset", "scannetpp", "--raw", str(tmp_path / "arkitscenes"),
                                 "--out", out])
    assert status == 2 and "Expected the scannetpp layout: <raw>/data/" in text
    assert "has the layout of arkitscenes (--dataset arkitscenes)" in text
    # One level too deep: the folder inside a release.
    status, text = _run(capsys, ["ingest", "--dataset", "scannetpp", "--raw", str(tmp_path / "scannetpp" / "data"),
                                 "--out", out])
    assert status == 2 and f"pass its parent ({tmp_path / 'scannetpp'})" in text
    # An unrelated folder: the expected layout, no guess.
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "readme.txt").write_text("nothing to ingest")
    status, text = _run(capsys, ["ingest", "--dataset", "arkitscenes", "--raw", str(unrelated), "--out", out])
    assert status == 2 and "no arkitscenes scene found" in text and "has the layout of" not in text


def _cli(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=300, **kwargs)


def _can_mount_read_only() -> bool:
    """A read-only bind mount in a private user + mount namespace (works for root and, where the kernel allows,
    for other users: root can write through a chmod, so chmod proves nothing for it)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount --bind / /mnt 2>/dev/null || "
                            "mount -t tmpfs none /mnt"], capture_output=True)
    return probe.returncode == 0


def _read_only(root: Path, argv: list[str]) -> subprocess.CompletedProcess:
    if _can_mount_read_only():
        script = (f"mount --bind {root} {root} && mount -o remount,bind,ro {root} && "
                  f"exec {sys.executable} -m pipeline.cli \"$@\"")
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.run(["unshare", "-r", "-m", "sh", "-c", script, "sh", *argv], capture_output=True,
                               text=True, env=env, timeout=300)
    if os.geteuid() == 0:
        pytest.skip("no way to make a folder read-only for root here (no user namespaces)")
    root.chmod(0o555)
    try:
        return _cli(argv)
    finally:
        root.chmod(0o755)


def test_read_only_root_is_one_clear_line(built_root, tmp_path):
    root = built_root.copy(tmp_path / "root")
    for argv in (["graph", "--root", str(root), "--rebuild", "--local"],
                 ["ingest", "--dataset", "scannet", "--raw", str(built_root.raw), "--out", str(root), "--local",
                  "--num-frames", "4"],
                 ["stats", "--root", str(root)]):
        proc = _read_only(root, argv)
        assert proc.returncode in (1, 2), proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and str(root) in errors[0], proc.stderr
        assert "cannot write in the dataset root" in errors[0]


def _file_size_limit(limit: int):
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # writes past the limit fail with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_disk_that_fills_up_names_the_file_and_keeps_each_scenes_error(built_root, tmp_path):
    """Writes past a file-size limit fail like writes to a full disk: each scene's failure is said and the run
    goes on; when the errors table itself cannot be written that is one more line, not a traceback."""
    root = tmp_path / "root"
    proc = _cli(["ingest", "--dataset", "scannet", "--raw", str(built_root.raw), "--out", str(root), "--local",
                 "--num-frames", "4"], preexec_fn=_file_size_limit(4096))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in text, text
    scene_errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ingest scannet/")]
    assert len(scene_errors) == 4                       # three scenes that could not be written, one broken .sens
    assert sum("File too large" in line and str(root) in line for line in scene_errors) == 3

    built = built_root.copy(tmp_path / "built")
    proc = _cli(["graph", "--root", str(built), "--rebuild", "--local"], preexec_fn=_file_size_limit(2000))
    text = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2) and "Traceback" not in text, text
    assert "File too large" in proc.stderr and "error: graph scannet/" in proc.stderr


def test_bad_values_are_refused_before_a_rebuild_deletes_anything(built_root, tmp_path, capsys):
    root = built_root.copy(tmp_path / "root")
    shards = {p.name: p.read_bytes() for p in (root / "train_shards").glob("*.tar")}
    assert shards
    for argv in (["pack", "--root", str(root), "--max-shard-mb", "-5", "--rebuild"],
                 ["pack", "--root", str(root), "--max-shard-mb", "zero", "--rebuild"],
                 ["train", "--root", str(root), "--tiny", "--steps", "-1", "--rebuild"],
                 ["train", "--root", str(root), "--tiny", "--epochs", "0", "--rebuild"],
                 ["graph", "--root", str(root), "--workers", "0"]):
        status, text = _run(capsys, argv)
        assert status == 2, (argv, text)
        assert ("must be" in text or "not a number" in text), (argv, text)
    assert {p.name: p.read_bytes() for p in (root / "train_shards").glob("*.tar")} == shards


def test_a_corrupt_bookkeeping_file_is_one_line_naming_it(built_root, tmp_path, capsys):
    root = built_root.copy(tmp_path / "root")
    (root / "qa" / "scenes.json").write_text("{not json")
    status, text = _run(capsys, ["qa", "--root", str(root), "--local", "--rebuild"])
    assert status == 2 and "scenes.json" in text and "not valid JSON" in text, text
    (root / "info.json").write_text("{not json")
    for argv in (["status", "--root", str(root)], ["graph", "--root", str(root), "--local"],
                 ["stats", "--root", str(root)]):
        status, text = _run(capsys, argv)
        assert status == 2 and "info.json: unreadable" in text, (argv, text)
    status, text = _run(capsys, ["status", "--root", str(root / "info.json")])
    assert status == 2 and "not a folder" in text, text
