"""The engine pool on a real two-node Ray cluster, all of it on this machine's loopback (127.0.0.1).

`ray.cluster_utils.Cluster` starts a head node and a worker node as separate raylets (each with
its own resources), every listener bound to 127.0.0.1. The pool spreads its two fake replicas
over the two nodes; the tests remove the worker node in the middle of a run and check that its
calls are retried on the surviving node, that every problem finishes with the output it has
without a failure, and that the eval records are complete and unduplicated.

Ray dials a loopback address through this machine's own IP unless it believes it runs on a
single-node platform (``ray_constants.ENABLE_RAY_CLUSTER``); the module fixture turns that belief
on while it runs, so the driver reaches the loopback-only head and no traffic leaves 127.0.0.1.

Example:
    flock /tmp/heavy.lock .venv/bin/pytest -q tests/test_ray_cluster.py
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from ray._private import ray_constants  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from lookahead.config import EngineConfig, SamplingParams, load_config  # noqa: E402
from lookahead.engines.fake import FakeEngine  # noqa: E402
from lookahead.engines.pool import PoolEngine  # noqa: E402
from lookahead.eval import harness as h  # noqa: E402
from lookahead.eval import runner  # noqa: E402
from lookahead.loop import LookaheadReasoner  # noqa: E402
from lookahead.scheduler import run_many  # noqa: E402

LOOPBACK = "127.0.0.1"
NODE = {"node_ip_address": LOOPBACK, "num_cpus": 1, "num_gpus": 1}  # every node: 1 CPU, 1 (declared) GPU
FAST_NODE_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
"""GCS declares a killed node dead after about 2 s instead of 15 s (Ray's defaults: 3000 ms x 5)."""
COMPARED = ("status", "error", "answer", "correct", "finish_reason", "completion", "prompt_tokens",
            "completion_tokens", "rounds", "committed_steps", "drafted_steps", "accepted_steps", "trace")  # fmt: skip
"""Record fields that must not depend on where or how often a call ran (times do)."""


@pytest.fixture(scope="module")
def cluster():
    """A head node on 127.0.0.1 (resource ``head_node``) with this process connected as the driver."""
    patch = pytest.MonkeyPatch()
    patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # keep loopback addresses on loopback
    head_args = {**NODE, "resources": {"head_node": 1}, "include_dashboard": False, "_system_config": FAST_NODE_DEATH}
    head = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        ray.init(address=head.address, log_to_driver=False)
        yield head
    finally:
        ray.shutdown()
        head.shutdown()
        patch.undo()


def slow_fake(delay_per_token: float):
    """Engine factory for the actors: the scripted fake, sleeping per generated token (so calls are in flight)."""

    def build(config: EngineConfig) -> FakeEngine:
        engine = FakeEngine.from_config(config)
        engine.delay_per_token = delay_per_token
        return engine

    return build


def remove_when_busy(cluster: Cluster, node, pool: PoolEngine, replica: int, start: threading.Event) -> threading.Thread:
    """A thread that, once ``start`` is set, kills ``node`` (SIGKILL, no draining) while ``replica`` runs a call."""

    def run() -> None:
        start.wait(timeout=60)
        deadline = time.monotonic() + 30
        while pool._replicas[replica].status != "busy" and time.monotonic() < deadline:
            time.sleep(0.002)
        cluster.remove_node(node, allow_graceful=False)

    thread = threading.Thread(target=run, name="remove-worker-node")
    thread.start()
    return thread


def replica_nodes(pool: PoolEngine) -> list[str | None]:
    return [s.get("node") for s in pool.replica_stats()]


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_unreachable_ray_address_is_one_line_exit_2(tmp_path):
    """Guards the join: an address where no Ray listens -> exit 2, one `error:` line, no traceback, no long wait."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "lookahead.cli", "eval", "--config", "tiny", "--task", "gsm8k", "--limit", "1",
         "--modes", "ar", "--concurrency", "2", "--no-warmup", "--out", str(tmp_path / "out"),
         "--set", "target.replicas=1", "--set", "draft.replicas=1", "--set", f"ray_address={LOOPBACK}:1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach a Ray cluster at ray_address='127.0.0.1:1'"), lines
    assert "Traceback" not in proc.stderr + proc.stdout
    assert time.monotonic() - start < 60


def test_worker_node_removed_mid_eval_loses_no_record(cluster, tmp_path):
    """Guards node loss: replicas on two nodes, the worker node killed mid-eval -> its calls retried on the
    head node, every record written once and equal to a failure-free run; the lost replica restarts on the head."""
    worker = cluster.add_node(**NODE, resources={"worker_node": 1})
    evaluation = runner.prepare_evaluation(
        task="gsm8k", modes="ar,lr", config="tiny", limit=10, out=tmp_path / "cluster", concurrency=4, command="test"
    )
    pool = PoolEngine.from_config(EngineConfig(backend="fake", model="fake", replicas=2), engine_factory=slow_fake(0.001), call_timeout_s=30)
    reasoner = LookaheadReasoner(evaluation.config, target=pool, draft=pool)
    try:
        nodes = replica_nodes(pool)
        assert sorted(nodes) == sorted([cluster.head_node.node_id, worker.node_id])  # one replica per node
        on_worker = nodes.index(worker.node_id)
        started = threading.Event()
        written: list[int] = []

        def on_record(record: dict) -> None:
            written.append(record["problem"])
            if len(written) == 3:
                started.set()

        killer = remove_when_busy(cluster, worker, pool, on_worker, started)
        store = runner.open_records(evaluation, force_new=False)
        try:
            h.run_all(reasoner, runner.pending_jobs(evaluation, store), store, h.pool_runner(4), on_record, warmup=False)
        finally:
            store.close()
            killer.join()
        assert len(written) > 3 and worker not in cluster.worker_nodes  # the node went while records were coming
        assert pool.stats.deaths >= 1 and pool.stats.retries >= 1 and pool.stats.failed_requests == 0
        # the lost replica comes back on the surviving node (a CPU bundle fits there)
        assert wait_for(lambda: replica_nodes(pool) == [cluster.head_node.node_id] * 2, timeout=30), pool.replica_stats()
    finally:
        reasoner.close()
        if worker in cluster.worker_nodes:
            cluster.remove_node(worker)

    lines = (evaluation.out / h.RECORDS_FILE).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    keys = [h.record_key(r) for r in records]
    assert len(keys) == len(set(keys)) == evaluation.total == 20  # complete, none duplicated
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records if r["status"] != "ok"]

    reference_eval = runner.prepare_evaluation(
        task="gsm8k", modes="ar,lr", config="tiny", limit=10, out=tmp_path / "reference", command="test"
    )
    reference_store = runner.open_records(reference_eval, force_new=False)
    with LookaheadReasoner(reference_eval.config) as local:
        h.run_all(local, runner.pending_jobs(reference_eval, reference_store), reference_store, warmup=False)
    reference_store.close()
    expected = {h.record_key(r): {k: r[k] for k in COMPARED} for r in reference_store.records}
    assert {h.record_key(r): {k: r[k] for k in COMPARED} for r in records} == expected


def test_replica_whose_node_is_gone_for_good_is_given_up(cluster):
    """Guards `_await_restart`: a replica whose GPU bundle no live node can take is marked dead after
    placement_timeout_s instead of waiting for ever; the survivor serves everything, shutdown is prompt."""
    worker = cluster.add_node(**NODE, resources={"worker_node": 1})
    cfg = EngineConfig(backend="fake", model="fake", replicas=2, num_gpus=1)
    pool = PoolEngine.from_config(cfg, engine_factory=slow_fake(0.001), call_timeout_s=30, placement_timeout_s=2)
    config = load_config("tiny", ["concurrency=4"])
    expected = LookaheadReasoner(config).generate("How many clips?")
    reasoner = LookaheadReasoner(config, target=pool, draft=pool)
    try:
        on_worker = replica_nodes(pool).index(worker.node_id)
        started = threading.Event()
        killer = remove_when_busy(cluster, worker, pool, on_worker, started)
        started.set()
        try:
            outcomes = run_many(reasoner, [f"Question {i}: how many clips?" for i in range(8)], concurrency=4)
        finally:
            killer.join()
        assert all(o.ok for o in outcomes), [o.error for o in outcomes]
        assert all(o.result.text == expected.text for o in outcomes)
        assert pool.stats.deaths >= 1 and pool.stats.retries >= 1
        assert wait_for(lambda: pool._replicas[on_worker].status == "dead", timeout=20), pool.replica_stats()
        prompt = pool.format_chat([{"role": "user", "content": "q"}])
        assert pool.generate([prompt], SamplingParams(max_new_tokens=64), stop=["\n\n"])[0].text  # the survivor serves
    finally:
        started = time.monotonic()
        reasoner.close()
        assert time.monotonic() - started < 15  # shutdown does not wait for the lost replica
        if worker in cluster.worker_nodes:
            cluster.remove_node(worker)


def test_loopback_address_ray_would_dial_elsewhere_is_refused(monkeypatch):
    """Guards the join check: a loopback ray_address that answers, while the node IP Ray would dial instead
    does not, is a ConfigError naming that IP (127.0.0.2 stands in for the machine's IP: traffic stays on lo)."""
    from ray import util as ray_util

    from lookahead.engines.pool import _check_reachable
    from lookahead.errors import ConfigError

    with socket.create_server((LOOPBACK, 0)) as server:
        port = server.getsockname()[1]
        monkeypatch.setattr(ray_util, "get_node_ip_address", lambda: LOOPBACK)
        _check_reachable(f"{LOOPBACK}:{port}")  # the node IP is loopback too (a namespace holding only lo): fine
        monkeypatch.setattr(ray_util, "get_node_ip_address", lambda: "127.0.0.2")
        with pytest.raises(ConfigError, match=rf"Ray dials it as 127\.0\.0\.2:{port}, this machine's node IP"):
            _check_reachable(f"{LOOPBACK}:{port}")
