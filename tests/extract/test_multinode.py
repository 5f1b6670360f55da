"""Extraction on a real two-node Ray cluster on this machine: a head node and a model node, each started with
``ray start``, the model actor pinned to the model node by a custom resource (``--actor-resource``). Killing the
model node's raylet mid-run loses the node; the rerun, once a replacement model node has joined, ends with every
scene exactly once and every file of ``tokens/`` byte-identical to a clean single-node run.

Each ``ray start`` runs in a new session, which every process of its node inherits (workers and actors too), so
the test finds a node's processes by session id and kills exactly what it started: ``ray stop`` would stop every
Ray of the user on this machine.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from extract_factories import file_hashes, ingest_synthetic

from pipeline.cli import main as cli_main
from pipeline.core.errors import read_errors
from pipeline.core.layout import DatasetRoot, scene_key
from pipeline.core.shards import read_index
from pipeline.core.tokens import iter_samples

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]
# One video per batch and one sample per shard, so a shard is done per scene. The driver keeps at most 4 batches
# in flight: when the first shard is done (scenes 0 and 1 written), at least 6 batches are still to submit.
SCENES = 12
ARGS = ["--random-tiny", "--size", "64", "--squash-size", "96", "--batch-videos", "1", "--shard-bytes", "100"]
MODEL_NODE = {"model_node": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    """Ray nodes started with ``ray start`` on this machine, each in a session of its own whose id is the pid of
    its ``ray start``."""

    def __init__(self):
        # Short: Ray's unix sockets live under it, and a socket path has at most 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="vr", dir="/tmp")
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update({
            # the nodes' workers (and the drivers) import this checkout, whatever else is installed
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            # a token in ~/.ray (any local ray.init leaves one) turns token auth on for a new head, but a node that
            # joins does not send it: plain on both sides
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        })
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.sessions: list[int] = []

    def _start(self, *args: str, env: dict[str, str] | None = None) -> int:
        # Every port a node opens is its own: two nodes share this host (and other Rays may run on it).
        ports = [f"--{name}={free_port()}" for name in ("node-manager-port", "object-manager-port",
                                                         "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                         "runtime-env-agent-port", "metrics-export-port")]
        proc = subprocess.Popen([*RAY_CLI, "start", "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
                                 "--object-store-memory=100000000", "--disable-usage-stats", *ports, *args],
                                env={**self.env, **(env or {})}, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.sessions.append(proc.pid)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"ray start {' '.join(args)} failed:\n{out[-3000:]}"
        return proc.pid

    def start_head(self, num_cpus: int) -> int:
        # The GCS declares a node dead after this many failed health checks at this period (default 5 x 3 s).
        fast_health_checks = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}
        return self._start("--head", f"--port={self.port}", f"--num-cpus={num_cpus}", "--include-dashboard=false",
                           f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
                           env=fast_health_checks)

    def start_node(self, num_cpus: int, resources: dict[str, float]) -> int:
        return self._start(f"--address={self.address}", f"--num-cpus={num_cpus}",
                           f"--resources={json.dumps(resources)}")

    def processes(self, session: int) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["status"]):
            try:
                if os.getsid(proc.pid) == session and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (ProcessLookupError, PermissionError):
                continue
        return found

    def command_lines(self, session: int) -> list[str]:
        lines = []
        for proc in self.processes(session):
            try:
                lines.append(" ".join(proc.cmdline()))
            except psutil.Error:
                continue
        return lines

    def raylet(self, session: int) -> psutil.Process:
        (raylet,) = [p for p in self.processes(session) if p.name() == "raylet"]
        return raylet

    def stop(self) -> None:
        """SIGKILL every process of the nodes started here (nothing else), then remove the temp dir."""
        for session in self.sessions:
            for proc in self.processes(session):
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
        deadline = time.monotonic() + 20
        while any(self.processes(s) for s in self.sessions) and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def ray_cluster():
    if importlib.util.find_spec("ray.scripts.scripts") is None:
        pytest.skip("the ray command line (ray.scripts.scripts) is not installed")
    cluster = LocalRayCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def extract_command(root: Path, cluster: LocalRayCluster) -> list[str]:
    # The driver attaches to the head's raylet (Ray prefers the head among nodes of one host), so it outlives the
    # model node. --node-wait bounds the wait for a lost model node to come back (the default is minutes).
    return [sys.executable, "-m", "pipeline.cli", "extract", "--root", str(root), *ARGS,
            "--ray-address", cluster.address, "--actor-resource", "model_node=1", "--node-wait", "3"]


def shard_keys(tokens: Path) -> list[str]:
    return [key for shard in read_index(tokens)["shards"] for key in shard["keys"]]


@pytest.mark.slow  # 30-50 s on a loaded 2-core machine: two `ray start` nodes, a third one, two drivers
def test_model_node_lost_mid_run_then_rerun_gives_every_scene_once_and_the_clean_bytes(ray_cluster, tmp_path):
    root = tmp_path / "root"
    ingest_synthetic(tmp_path / "raw", root, [9] * SCENES)
    keys = [scene_key(d, s) for d, s in DatasetRoot(root).scenes()]
    assert len(keys) == SCENES
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    assert cli_main(["extract", "--root", str(clean), *ARGS, "--local"]) == 0      # in-process, one node
    clean_hashes = file_hashes(clean / "tokens")

    # Logical CPUs enough that the head stays less than half busy: Ray would then place an actor that is not
    # pinned on the driver's node, the head, so the placement checked below is the custom resource's doing.
    head = ray_cluster.start_head(num_cpus=16)
    model_node = ray_cluster.start_node(num_cpus=1, resources=MODEL_NODE)    # the model actor's CPU
    log_path = tmp_path / "killed_run.log"
    with log_path.open("w") as log:
        driver = subprocess.Popen(extract_command(root, ray_cluster), env=ray_cluster.env, cwd=REPO_ROOT,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            # Mid-run: when the first shard is done, freeze the driver (it can neither write nor submit more) and
            # kill the model node's raylet; the node's workers, the model actor among them, go with it.
            first_marker = root / "tokens" / "_done" / "shard-000000.json"
            deadline = time.monotonic() + 180
            while not first_marker.exists():
                assert driver.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no shard was done in 180 s"
                time.sleep(0.01)
            os.kill(driver.pid, signal.SIGSTOP)
            try:
                # the custom resource put the model actor on the model node, and only there
                assert any(line.startswith("ray::TokenActor") for line in ray_cluster.command_lines(model_node))
                assert not any(line.startswith("ray::TokenActor") for line in ray_cluster.command_lines(head))
                ray_cluster.raylet(model_node).kill()
            finally:
                os.kill(driver.pid, signal.SIGCONT)
            status = driver.wait(timeout=180)
        finally:
            if driver.poll() is None:
                driver.kill()
    output = log_path.read_text()
    # The run stops (exit 1) and keeps the shards it completed; it returned normally (its last summary line).
    assert status == 1, f"the kill did not stop the run (did it finish first?):\n{output[-3000:]}"
    assert "vlm3r-data extract: aborted:" in output and "rerun to resume" in output
    tokens = root / "tokens"
    survived = shard_keys(tokens)
    assert 1 <= len(survived) < SCENES and survived == keys[:len(survived)], survived
    assert f"; {len(survived)} shards, {len(survived)} samples in index.json" in output
    # the scene in the open shard failed (an error row, redone by the rerun); the ones after it were not reached
    assert (f"extract: {len(survived)} done, 0 up to date, 1 failed, {SCENES - len(survived) - 1} not reached of "
            f"{SCENES} scenes") in output
    assert [s.key for s in iter_samples(tokens)] == survived           # the complete shards read back
    (row,) = [r for r in read_errors(root / "errors.parquet") if r.stage == "extract"]
    assert row.error_type == "ExtractionAborted" and scene_key(row.dataset, row.scene_id) == keys[len(survived)]

    # A replacement model node joins; the same command resumes.
    ray_cluster.start_node(num_cpus=1, resources=MODEL_NODE)
    rerun = subprocess.run(extract_command(root, ray_cluster), env=ray_cluster.env, cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"extract: {SCENES - len(survived)} done, {len(survived)} up to date of {SCENES} scenes" in rerun.stdout
    assert shard_keys(tokens) == keys                                   # every scene exactly once, in order
    assert [s.key for s in iter_samples(tokens)] == keys
    assert not [r for r in read_errors(root / "errors.parquet") if r.stage == "extract"]
    # byte-identical to the clean single-node run: shards, index and done-markers
    assert file_hashes(tokens) == clean_hashes


def cli_status(argv: list[str]) -> int:
    try:
        return cli_main(argv)
    except SystemExit as exc:          # argparse's usage errors
        return exc.code


def test_actor_resource_and_node_wait_options_are_checked(tmp_path, capsys):
    root = str(tmp_path / "root")
    for value, message in [("model_node", "expected NAME=AMOUNT (e.g. model_node=1), got 'model_node'"),
                           ("model_node=x", "expected NAME=AMOUNT"),
                           ("CPU=1", "actor resource CPU: set CPUs and GPUs with"),
                           ("model_node=0", "model_node: the amount must be a positive number, got 0.0"),
                           ("model_node=nan", "model_node: the amount must be a positive number, got nan"),
                           ("model_node=0.00001", "model_node: Ray takes amounts with at most 4 decimals")]:
        assert cli_status(["extract", "--root", root, "--random-tiny", "--actor-resource", value]) == 2
        err = capsys.readouterr().err
        assert "extract: error: argument --actor-resource: " in err and message in err and "Traceback" not in err
    assert cli_status(["extract", "--root", root, "--random-tiny", "--actor-resource", "a=1", "b=0.5", "a=2"]) == 2
    assert "error: extract: --actor-resource gives a more than once" in capsys.readouterr().err
    assert cli_status(["extract", "--root", root, "--random-tiny", "--node-wait", "0"]) == 2
    assert "error: extract: node wait must be a positive number of seconds, got 0.0" in capsys.readouterr().err


def test_pinned_actor_on_a_cluster_without_its_resource_is_refused_before_any_work(ray_local, tmp_path, capsys):
    root = tmp_path / "root"
    ingest_synthetic(tmp_path / "raw", root, [5, 6])
    assert cli_main(["extract", "--root", str(root), *ARGS, "--local"]) == 0
    before = file_hashes(root / "tokens")
    capsys.readouterr()
    # --rebuild would remove the shards first: the cluster is checked before that
    assert cli_main(["extract", "--root", str(root), *ARGS, "--rebuild", "--actor-resource", "model_node=1"]) == 2
    err = capsys.readouterr().err
    assert "1 model actor(s) x 1 model_node need more model_node than the Ray cluster has (0)" in err
    assert "ray start --resources='{\"model_node\": 1}'" in err and "Traceback" not in err
    assert file_hashes(root / "tokens") == before


def test_a_lost_actor_resource_aborts_the_wait_for_a_batch(ray_local):
    """An actor whose node was lost waits for a node that can host its restart; when none has the resource for
    node_wait_s, the driver stops waiting (here: a call that no node of the local cluster can ever run)."""
    from workers.extract import ExtractionAborted, Scheduling, _await_batch

    ray = ray_local
    assert _await_batch(ray.remote(lambda: 7).remote(), Scheduling(node_wait_s=0.5)) == 7
    never = ray.remote(resources=MODEL_NODE)(lambda: 7).remote()
    start = time.monotonic()
    with pytest.raises(ExtractionAborted, match=r"for 0.5 s, 1 model actor\(s\) x 1 model_node need more model_node "
                                                r"than the Ray cluster has \(0\).*rerun to resume"):
        _await_batch(never, Scheduling(actor_resources=MODEL_NODE, node_wait_s=0.5))
    assert 0.5 <= time.monotonic() - start < 30
    ray.cancel(never)
