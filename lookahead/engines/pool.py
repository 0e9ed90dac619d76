"""Engine replicas as Ray actors behind one thread-safe `Engine`: merged batches, retries, timeouts.

Why a pool: one engine in this process decodes one batch at a time, so problems that run
concurrently (`lookahead.scheduler.run_many`, the server) wait for each other. `PoolEngine` puts
``EngineConfig.replicas`` copies of the engine in Ray actors and lets many threads call
`generate` at once. The calls are **merged**: requests that wait while the replicas are busy
(or arrive within ``batch_window_s`` of each other) go to a replica as ONE `generate` call, and
every caller gets back its own rows in order. That is continuous batching at the level of engine
calls: the γ+1 target rows of one problem's round share a batch with the rows of other problems.

How a request travels::

    caller thread --generate()--> pending queue --> replica driver thread (one per replica)
        takes the oldest request, adds waiting requests with the same (stop, speculate) up to
        its share of the waiting rows (<= max_batch_rows), sends ONE actor call, waits for it
        (at most call_timeout_s), splits the rows back to the callers' futures

Rules a merged call keeps:
- rows of one request stay together on one replica (they share a prefix: prefix cache);
- rows may have different `SamplingParams` (sent per row) but share ``stop`` and ``speculate``;
- a request goes back to the replica that served its prompt prefix last, when that replica is
  idle (prefix-cache affinity), else to any idle replica.

Placement: each replica gets one bundle of a Ray placement group (its GPUs, or a token CPU share)
with strategy SPREAD, so on a cluster (``ray_address``) the replicas land on different nodes as far
as the nodes go. ``ray_address`` is checked first: where nothing answers, a `ConfigError` at once.

Fault tolerance (each failure charges one attempt to every request in the call; a request fails
after ``call_retries + 1`` attempts, alone, with `EngineCallError`; other requests go on):
- an actor that dies mid-call is restarted by Ray (``max_restarts``); its requests are retried,
  on another replica when there is one;
- a node that goes away takes its replicas down: their calls are retried on the replicas of the
  other nodes; Ray restarts each lost replica where its bundle fits again (a CPU replica: any
  node), and one that no live node can take within ``placement_timeout_s`` (its GPU was on the
  lost node) is given up: the pool goes on with the others;
- a call that takes longer than ``call_timeout_s`` counts as hung: the replica is killed and
  restarted (a sync actor runs one call at a time, so a hung one would block it) and its
  requests are retried;
- after a failure the requests are retried one by one (never merged again), so one bad request
  cannot keep failing the requests it happened to share a call with;
- an error raised by the engine itself (e.g. `PromptError`) is not a replica fault: a merged
  call is split into single requests, and the request that raises gets that error, as with an
  in-process engine.

`shutdown()` kills the actors and stops Ray if this module started it (Ctrl-C safe: the drivers
are daemon threads and every live pool is shut down at interpreter exit). This is the only
module that imports ``ray``.

Example:
    >>> from lookahead.config import EngineConfig, SamplingParams
    >>> pool = PoolEngine.from_config(EngineConfig(backend="fake", replicas=2))   # doctest: +SKIP
    >>> pool.generate(["<user>\\nq\\n<assistant>\\n"], SamplingParams(max_new_tokens=64),
    ...               stop=["\\n\\n"])[0].text                                     # doctest: +SKIP
    'Natalia sold 48 clips in April.\\n\\n'
    >>> pool.shutdown()                                                          # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import exceptions as ray_errors

from lookahead.config import EngineConfig, SamplingParams
from lookahead.engines.base import EngineBase, merge_key_parts
from lookahead.errors import ConfigError, LookaheadError, ModelLoadError
from lookahead.types import Completion

logger = logging.getLogger(__name__)

EngineFactory = Callable[[EngineConfig], Any]
"""Builds the engine inside an actor from its config (default: `lookahead.engines.create_engine`)."""

AFFINITY_PREFIX_CHARS = 256  # prompt characters that identify a problem for replica affinity (chars)
AFFINITY_MAX_ENTRIES = 4096  # remembered prompt prefixes (entries); the oldest are forgotten
PLACEMENT_STRATEGY = "SPREAD"
"""How the replicas' placement bundles are laid over a cluster: one replica per node as far as the
nodes go (losing a node loses as few replicas as possible), several per node beyond that."""
CPU_REPLICA_CPUS = 0.01  # CPUs a CPU replica reserves (CPUs): a token, as a bundle cannot be empty;
# what it really uses is its share of threads (`ReplicaWorker`), so replicas > num_cpus still fit
RESTART_POLL_S = 0.5  # how often a replica's restart is looked at while waiting for it (s)
CONNECT_TIMEOUT_S = 5.0  # seconds to reach a Ray address given by ray_address before calling it unreachable (s)
TOKENIZER_ONLY_BACKENDS = ("hf", "sglang", "vllm")
"""Backends whose text side (tokens, chat template) is the model's HF tokenizer: the pool loads
only the tokenizer in this process. Other backends (``fake``, remote clients) are cheap to build
here and answer `count_tokens` / `format_chat` themselves."""


class EngineCallError(LookaheadError):
    """An engine call of a pool failed on every attempt (replica died, hung or the pool was shut
    down); only the problem that made the call fails."""

    def __init__(self, message: str, attempts: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts  # calls tried for this request before giving up (count)


# --------------------------------------------------------------------------------------------
# The Ray session: started here (local, quiet) or joined; stopped by the last pool that used it


_RAY_LOCK = threading.Lock()
_RAY_USERS = 0  # pools using a Ray session that this module started (count)


def _acquire_ray(address: str | None) -> bool:
    """Make sure Ray is initialised; return True if this module owns the session (and must stop it)."""
    global _RAY_USERS
    with _RAY_LOCK:
        if ray.is_initialized():
            if _RAY_USERS > 0:
                _RAY_USERS += 1
                return True
            return False  # someone else's session (a test, a notebook): use it, never stop it
        try:
            if address is None:
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count() or 1,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            else:
                _check_reachable(address)
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError, ray_errors.AuthenticationError) as exc:
            if _token_refused(exc):
                raise ConfigError(
                    f"the Ray cluster at {address!r} refused this process (Ray token authentication): set "
                    "RAY_AUTH_MODE=token and give it the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN), "
                    "as for every `ray start --address=...` that joins it"
                ) from None
            where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
            raise ConfigError(
                f"could not start or join {where}: {exc}; set ray_address to 'auto' on a cluster node, "
                "'ray://HOST:10001' elsewhere, or leave it empty (null) to start Ray locally"
            ) from None
        _RAY_USERS = 1
        return True


def _token_refused(exc: BaseException | None) -> bool:
    """Did joining fail on Ray's token authentication? (ray.init wraps it in a ConnectionError.)"""
    for _ in range(8):  # the chain: ConnectionError <- RuntimeError (its text holds the last attempt's traceback)
        if exc is None:
            return False
        if isinstance(exc, ray_errors.AuthenticationError) or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _check_reachable(address: str) -> None:
    """Raise `ConfigError` at once when nothing answers at ``address`` (``HOST:PORT`` or
    ``ray://HOST:PORT``); ``ray.init`` would retry it for many minutes. "auto" is left to Ray.

    Ray dials a loopback host (127.0.0.1, localhost) through this machine's node IP, so that
    address must answer too: a cluster whose nodes listen on loopback only is out of reach.
    """
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", or malformed: ray.init says what is wrong
    host = host.strip("[]")
    targets = [host]
    if not address.startswith("ray://") and host in ("127.0.0.1", "localhost", "::1"):
        from ray.util import get_node_ip_address

        targets.append(get_node_ip_address())
    for target in dict.fromkeys(targets):
        try:
            with socket.create_connection((target, int(port)), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            via = f" (Ray dials it as {target}:{port}, this machine's node IP)" if target != host else ""
            raise ConfigError(
                f"cannot reach a Ray cluster at ray_address={address!r}{via}: {why}; start one there "
                "(ray start --head --port=PORT), fix the address, or leave ray_address empty (null) to start Ray locally"
            ) from None


def _release_ray() -> None:
    global _RAY_USERS
    with _RAY_LOCK:
        if _RAY_USERS <= 0:
            return
        _RAY_USERS -= 1
        if _RAY_USERS == 0 and ray.is_initialized():
            ray.shutdown()


# --------------------------------------------------------------------------------------------
# The actor


class ReplicaWorker:
    """One engine replica; runs inside a Ray actor (one call at a time)."""

    def __init__(self, config: EngineConfig, factory: EngineFactory | None, cpu_threads: int | None) -> None:
        if cpu_threads and config.backend == "hf":
            import torch  # Ray sets OMP_NUM_THREADS=1 in workers; give CPU replicas their share back

            torch.set_num_threads(cpu_threads)
        if factory is None:
            from lookahead.engines import create_engine

            factory = create_engine
        self.engine = factory(config)
        self.calls: list[int] = []  # rows of every generate() call this incarnation served (rows)

    def ready(self) -> dict[str, Any]:
        return {
            "name": self.engine.name,
            "context_length": self.engine.context_length(),
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),  # the Ray node this incarnation runs on (hex id)
        }

    def generate(
        self, prompts: list[str], params: list[SamplingParams], stop: list[str], speculate: bool
    ) -> list[Completion]:
        self.calls.append(len(prompts))
        return self.engine.generate(prompts, params, stop=stop, speculate=speculate)

    def clear_prefix_cache(self) -> bool:
        return bool(self.engine.clear_prefix_cache()) if isinstance(self.engine, EngineBase) else False

    def stats(self) -> dict[str, Any]:
        return {"calls": list(self.calls), "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def shutdown(self) -> None:
        self.engine.shutdown()


# --------------------------------------------------------------------------------------------
# The pool


@dataclass(eq=False)
class _Request:
    """One caller's `generate` call while it waits in the pool."""

    prompts: list[str]  # the caller's rows, in order
    params: list[SamplingParams]  # one per row
    key: tuple[tuple[str, ...], bool]  # (stop strings, speculate): only equal keys share a call
    affinity: str  # the first prompt's first AFFINITY_PREFIX_CHARS characters
    future: Future  # resolves to the caller's list[Completion] or its exception
    enqueued: float = field(default_factory=time.monotonic)  # when it (re)entered the queue (monotonic s)
    attempts: int = 0  # failed calls that carried this request (count)
    avoid: set[int] = field(default_factory=set)  # replicas where it failed (indices)
    solo: bool = False  # never merge again (after a failure, to isolate the culprit)
    errors: list[str] = field(default_factory=list)  # what went wrong on each failed attempt


@dataclass(eq=False)
class _Replica:
    """Bookkeeping of one actor, owned by its driver thread."""

    index: int  # 0-based replica number (stable across restarts)
    handle: Any  # the Ray actor handle
    status: str = "starting"  # "starting", "idle" (waiting for work), "busy" or "dead"
    thread: threading.Thread | None = None  # the driver thread


@dataclass
class PoolStats:
    """Counters of one pool since it started (read them any time; they only grow)."""

    calls: int = 0  # actor generate() calls sent (count)
    rows: int = 0  # rows in those calls (rows)
    requests: int = 0  # caller generate() requests served or failed (count)
    merged_calls: int = 0  # calls that carried more than one request (count)
    retries: int = 0  # requests re-queued after a failed call (count)
    timeouts: int = 0  # calls that exceeded call_timeout_s (count)
    deaths: int = 0  # calls whose actor died (count)
    failed_requests: int = 0  # requests that ended with an error (count)


_LIVE_POOLS: weakref.WeakSet[PoolEngine] = weakref.WeakSet()


class PoolEngine(EngineBase):
    """`Engine` whose calls run on Ray actor replicas, merged across calling threads.

    Safe to call from many threads at once (``thread_safe = True``): the scheduler uses this to
    run problems concurrently without the reasoner's generation lock.
    """

    thread_safe = True  # generate() may be called from many threads at once

    def __init__(
        self,
        config: EngineConfig,
        *,
        ray_address: str | None = None,
        call_timeout_s: float = 600.0,
        call_retries: int = 2,
        max_restarts: int = 3,
        batch_window_s: float = 0.003,
        startup_timeout_s: float = 1800.0,
        placement_timeout_s: float = 60.0,
        engine_factory: EngineFactory | None = None,
    ) -> None:
        if config.replicas < 1:
            raise ConfigError(f"a pool needs replicas >= 1 (got {config.replicas}); 0 runs the engine in this process")
        self.config = config  # the engine config of every replica (replicas > 0)
        self.name = f"pool{config.replicas}:{config.model}"  # the served model's name once a replica is up
        self._owns_ray = False  # did this pool start the Ray session (and must stop it)?
        self.call_timeout_s = call_timeout_s  # seconds before a call counts as hung (s)
        self.call_retries = call_retries  # retries of a failed call per request (count)
        self.max_restarts = max_restarts  # Ray restarts of each actor after it dies (count)
        self.batch_window_s = batch_window_s  # how long an idle replica waits for more requests (s)
        self.startup_timeout_s = startup_timeout_s  # seconds a replica may take to (re)load (s)
        self.placement_timeout_s = placement_timeout_s  # seconds a replica that lost its node may wait for another (s)
        self.stats = PoolStats()
        self._cond = threading.Condition()
        self._pending: collections.deque[_Request] = collections.deque()
        self._affinity: collections.OrderedDict[str, int] = collections.OrderedDict()  # prefix -> replica
        self._closed = False
        self._replicas: list[_Replica] = []
        self._placement_group = None
        self._text_lock = threading.Lock()  # tokenizers are not safe for concurrent calls

        self._text = self._local_text_side(config)  # count_tokens / format_chat, in this process
        self._owns_ray = _acquire_ray(ray_address)
        try:
            self._start_replicas(engine_factory)
            info = self._await_all_ready()
        except BaseException:
            self.shutdown()
            raise
        self._context_length = info["context_length"]
        self.name = f"pool{config.replicas}:{info['name']}"
        for rep in self._replicas:
            rep.status = "idle"
            rep.thread = threading.Thread(target=self._drive, args=(rep,), name=f"pool-{self.name}-{rep.index}", daemon=True)
            rep.thread.start()
        _LIVE_POOLS.add(self)

    @classmethod
    def from_config(
        cls,
        config: EngineConfig,
        *,
        ray_address: str | None = None,
        call_timeout_s: float = 600.0,
        call_retries: int = 2,
        **kwargs: Any,
    ) -> PoolEngine:
        """Start ``config.replicas`` actors and wait until each has loaded its engine."""
        return cls(config, ray_address=ray_address, call_timeout_s=call_timeout_s, call_retries=call_retries, **kwargs)

    # ---- startup -----------------------------------------------------------------------------

    @staticmethod
    def _local_text_side(config: EngineConfig) -> Any:
        """What answers count_tokens / format_chat here: the model's tokenizer, or a cheap engine."""
        single = dataclasses.replace(config, replicas=0)
        if config.backend in TOKENIZER_ONLY_BACKENDS:
            from lookahead.engines.hf.text import TokenizerText

            return TokenizerText.load(single)
        from lookahead.engines import create_engine

        return create_engine(single)

    def _start_replicas(self, factory: EngineFactory | None) -> None:
        """Reserve one placement bundle per replica (spread over the nodes), then start the actors in them."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cfg = self.config
        single = dataclasses.replace(cfg, replicas=0)
        on_gpu = cfg.num_gpus > 0
        bundle = {"GPU": cfg.num_gpus} if on_gpu else {"CPU": CPU_REPLICA_CPUS}
        # Every replica's bundle is reserved at once, so a cluster that is too small fails now with a
        # clear message instead of leaving some replicas pending forever.
        self._placement_group = placement_group([bundle] * cfg.replicas, strategy=PLACEMENT_STRATEGY)
        ready, _ = ray.wait([self._placement_group.ready()], timeout=min(self.startup_timeout_s, 120.0))
        if not ready:
            raise ConfigError(
                f"the Ray cluster cannot place {cfg.replicas} replicas needing {bundle} each "
                f"(cluster resources: {ray.cluster_resources()}); lower replicas or num_gpus, or add nodes"
            )
        cpu_threads = None if on_gpu else max(1, (os.cpu_count() or 1) // cfg.replicas)  # share this machine's cores
        actor_cls = ray.remote(ReplicaWorker)
        for i in range(cfg.replicas):
            handle = actor_cls.options(
                max_restarts=self.max_restarts,
                max_task_retries=0,
                num_cpus=0 if on_gpu else CPU_REPLICA_CPUS,
                num_gpus=cfg.num_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self._placement_group, placement_group_bundle_index=i
                ),
            ).remote(single, factory, cpu_threads)
            self._replicas.append(_Replica(index=i, handle=handle))

    def _await_all_ready(self) -> dict[str, Any]:
        refs = [rep.handle.ready.remote() for rep in self._replicas]
        try:
            infos = ray.get(refs, timeout=self.startup_timeout_s)
        except ray_errors.GetTimeoutError:
            raise ModelLoadError(
                f"the {self.config.replicas} replicas of {self.config.model!r} did not load within "
                f"{self.startup_timeout_s:.0f} s"
            ) from None
        except ray_errors.RayActorError as exc:
            raise ModelLoadError(
                f"an engine replica of {self.config.model!r} ({self.config.backend}) could not start: "
                f"{_last_line(exc)}"
            ) from None
        return infos[0]

    # ---- Engine protocol ---------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams | Sequence[SamplingParams],
        stop: Sequence[str] = (),
        speculate: bool = False,
    ) -> list[Completion]:
        """Queue the rows, wait for the merged call that carries them, return them in order."""
        prompts, per_row, stops = merge_key_parts(prompts, params, stop)
        if not prompts:
            return []
        request = _Request(
            prompts=prompts,
            params=per_row,
            key=(stops, bool(speculate)),
            affinity=prompts[0][:AFFINITY_PREFIX_CHARS],
            future=Future(),
        )
        with self._cond:
            if self._closed:
                raise EngineCallError(f"engine pool {self.name} was shut down")
            if all(r.status == "dead" for r in self._replicas):
                raise EngineCallError(f"every replica of {self.name} died (max_restarts={self.max_restarts} each)")
            self._pending.append(request)
            self._cond.notify_all()
        return request.future.result()

    def occupancy(self) -> int:
        """Rows waiting for a replica now: what the caller's next call would share a batch with."""
        with self._cond:
            return sum(len(q.prompts) for q in self._pending)

    def clear_prefix_cache(self) -> bool:
        """Clear every running replica's cache; True only if each one did."""
        running = [rep for rep in self._replicas if rep.status != "dead"]
        if not running:
            return False
        refs = [rep.handle.clear_prefix_cache.remote() for rep in running]
        try:
            return all(ray.get(refs, timeout=self.call_timeout_s))
        except Exception:  # noqa: BLE001 -- a replica restarting: its cache starts empty anyway, but say not cleared
            return False

    def count_tokens(self, text: str) -> int:
        with self._text_lock:
            return self._text.count_tokens(text)

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        with self._text_lock:
            return self._text.format_chat(messages)

    def context_length(self) -> int | None:
        return self._context_length

    def replica_stats(self) -> list[dict[str, Any]]:
        """Per replica: ``status``; for a running one also ``calls`` (rows of each call since its last
        restart), ``pid`` and ``node`` (the Ray node id it runs on)."""
        out = []
        for rep in self._replicas:
            entry: dict[str, Any] = {"replica": rep.index, "status": rep.status}
            if rep.status in ("idle", "busy"):  # a starting one may be waiting for a node: do not block on it
                try:
                    entry.update(ray.get(rep.handle.stats.remote(), timeout=self.call_timeout_s))
                except ray_errors.RayError as exc:
                    entry["error"] = _last_line(exc)
            out.append(entry)
        return out

    def replica_handles(self) -> list[Any]:
        """The Ray actor handles, by replica index (for tests and operators: e.g. `ray.kill`)."""
        return [rep.handle for rep in self._replicas]

    def shutdown(self) -> None:
        """Fail waiting requests, kill the actors, stop Ray if we started it. Safe to call twice."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for request in pending:
            self._fail(request, f"engine pool {self.name} was shut down")
        for rep in self._replicas:
            try:
                ray.kill(rep.handle, no_restart=True)
            except (ray_errors.RayError, ValueError):
                pass  # already gone
        for rep in self._replicas:
            if rep.thread is not None and rep.thread is not threading.current_thread():
                rep.thread.join(timeout=10.0)
        if self._placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self._placement_group)
            except ray_errors.RayError:
                pass
            self._placement_group = None
        self._text.shutdown()
        _LIVE_POOLS.discard(self)
        if self._owns_ray:
            self._owns_ray = False
            _release_ray()

    # ---- the replica drivers -----------------------------------------------------------------

    def _drive(self, rep: _Replica) -> None:
        """One replica's loop: take a merged batch, run it, hand the rows back; repeat."""
        while True:
            batch = self._take_batch(rep)
            if batch is None:
                return
            if not self._run_batch(rep, batch):
                return  # the replica is dead

    def _take_batch(self, rep: _Replica) -> list[_Request] | None:
        with self._cond:
            self._set_status(rep, "idle")
            while True:
                if self._closed:
                    return None
                batch, wait_s = self._pick(rep)
                if batch:
                    for request in batch:
                        self._pending.remove(request)
                    self._set_status(rep, "busy")
                    return batch
                self._cond.wait(timeout=wait_s)

    def _pick(self, rep: _Replica) -> tuple[list[_Request], float | None]:
        """The requests ``rep`` should run now (lock held), or ([], seconds to wait)."""
        live = [r.index for r in self._replicas if r.status != "dead"]
        eligible = [q for q in self._pending if self._eligible(q, rep, live)]
        if not eligible:
            return [], None
        first = eligible[0]
        if first.solo:
            return [first], None
        same = [q for q in eligible if q.key == first.key and not q.solo]
        waiting_rows = sum(len(q.prompts) for q in same)
        age = time.monotonic() - first.enqueued
        if age < self.batch_window_s and waiting_rows < self.config.max_batch_rows:
            return [], self.batch_window_s - age  # let concurrent callers join this call
        idle = sum(1 for r in self._replicas if r.status == "idle")
        share = min(self.config.max_batch_rows, max(1, math.ceil(waiting_rows / max(idle, 1))))
        batch, rows = [], 0
        for q in same:
            if batch and rows + len(q.prompts) > share:
                break  # first come, first served: later requests wait for the next call
            batch.append(q)
            rows += len(q.prompts)
        return batch, None

    def _eligible(self, q: _Request, rep: _Replica, live: list[int]) -> bool:
        if rep.index in q.avoid and any(i not in q.avoid for i in live):
            return False  # it failed here; another live replica should try
        home = self._affinity.get(q.affinity)
        cached_elsewhere = home is not None and home != rep.index and home not in q.avoid
        return not (cached_elsewhere and self._replicas[home].status == "idle")  # that idle replica will take it

    def _count(self, **increments: int) -> None:
        with self._cond:
            for name, n in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + n)

    def _set_status(self, rep: _Replica, status: str) -> None:
        rep.status = status
        self._cond.notify_all()

    def _run_batch(self, rep: _Replica, batch: list[_Request]) -> bool:
        """Run one merged call; return False when the replica is dead for good."""
        prompts = [p for q in batch for p in q.prompts]
        params = [p for q in batch for p in q.params]
        stop, speculate = batch[0].key
        self._count(calls=1, rows=len(prompts), merged_calls=int(len(batch) > 1))
        try:
            ref = rep.handle.generate.remote(prompts, params, list(stop), speculate)
            out = ray.get(ref, timeout=self.call_timeout_s)
        except ray_errors.GetTimeoutError:
            self._count(timeouts=1)
            reason = f"replica {rep.index} did not answer within call_timeout_s={self.call_timeout_s:g} s"
            logger.warning("%s: %s; restarting it", self.name, reason)
            try:
                ray.kill(rep.handle, no_restart=False)  # a sync actor runs one call at a time: free it
            except (ray_errors.RayError, ValueError):
                pass
            self._retry(batch, rep, reason)
            return self._await_restart(rep)
        except ray_errors.RayTaskError as exc:  # the engine itself raised: not a replica fault
            self._engine_error(batch, exc)
            return True
        except ray_errors.RayError as exc:  # actor died / unavailable / object lost
            if self._closed:
                for q in batch:
                    self._fail(q, f"engine pool {self.name} was shut down")
                return False
            self._count(deaths=1)
            reason = f"replica {rep.index} failed ({type(exc).__name__}: {_last_line(exc)})"
            logger.warning("%s: %s; retrying its requests", self.name, reason)
            self._retry(batch, rep, reason)
            return self._await_restart(rep)
        if len(out) != len(prompts):
            self._engine_error(batch, RuntimeError(f"replica returned {len(out)} rows for {len(prompts)} prompts"))
            return True
        start = 0
        with self._cond:
            for q in batch:
                self._affinity[q.affinity] = rep.index
                self._affinity.move_to_end(q.affinity)
            while len(self._affinity) > AFFINITY_MAX_ENTRIES:
                self._affinity.popitem(last=False)
        for q in batch:
            q.future.set_result(out[start : start + len(q.prompts)])
            start += len(q.prompts)
        self._count(requests=len(batch))
        return True

    def _engine_error(self, batch: list[_Request], exc: BaseException) -> None:
        """The engine raised: split a merged call into single requests; a single one gets the error."""
        if len(batch) > 1:
            with self._cond:
                for q in reversed(batch):
                    q.solo = True
                    self._pending.appendleft(q)
                self._cond.notify_all()
            return
        cause = getattr(exc, "cause", None) or exc
        q = batch[0]
        self._count(requests=1, failed_requests=1)
        if isinstance(cause, LookaheadError):
            q.future.set_exception(cause)  # e.g. PromptError: the user's to fix, as in-process
        else:
            q.future.set_exception(
                EngineCallError(
                    f"engine {self.name} raised {type(cause).__name__}: {_last_line(cause)}", attempts=q.attempts + 1
                )
            )

    def _retry(self, batch: list[_Request], rep: _Replica, reason: str) -> None:
        """Re-queue (alone, at the front, away from ``rep``) or fail each request of a failed call."""
        again = []
        for q in batch:
            q.attempts += 1
            q.errors.append(reason)
            if q.attempts > self.call_retries:
                self._fail(q, reason)
            else:
                q.avoid.add(rep.index)
                q.solo = True
                q.enqueued = time.monotonic()
                again.append(q)
        with self._cond:
            if self._closed:
                for q in again:
                    self._fail(q, f"engine pool {self.name} was shut down")
                return
            for q in reversed(again):
                self._pending.appendleft(q)
            self._cond.notify_all()
        self._count(retries=len(again))

    def _fail(self, q: _Request, reason: str) -> None:
        if q.future.done():
            return
        self._count(requests=1, failed_requests=1)
        history = "; ".join(q.errors) if q.errors else reason
        q.future.set_exception(
            EngineCallError(
                f"engine call to {self.name} failed after {max(q.attempts, 1)} "
                f"attempt(s) (call_retries={self.call_retries}): {history}. If calls are merely slow, raise "
                "--set call_timeout_s=SECONDS; if replicas keep dying, check their memory and logs",
                attempts=q.attempts,
            )
        )

    def _await_restart(self, rep: _Replica) -> bool:
        """Wait until Ray has restarted ``rep``; mark it dead (and maybe fail everything) if it cannot.

        It cannot when Ray gives up on the actor (restarts used up), when it takes longer than
        ``startup_timeout_s``, or when its node is gone and no live node can take its placement
        bundle within ``placement_timeout_s`` (e.g. the GPU it needs was on that node). Meanwhile the
        other replicas serve every request (a "starting" replica takes none).
        """
        with self._cond:
            self._set_status(rep, "starting")
        deadline = time.monotonic() + self.startup_timeout_s
        unplaced_since: float | None = None  # when its bundle was first seen without a node (monotonic s)
        ref = rep.handle.ready.remote()
        while True:
            try:
                ray.get(ref, timeout=max(min(RESTART_POLL_S, deadline - time.monotonic()), 0.001))
                return True
            except ray_errors.GetTimeoutError:  # still loading, or waiting for a node
                pass
            except ray_errors.ActorUnavailableError:  # restarting right now: ask again
                time.sleep(RESTART_POLL_S)
                ref = rep.handle.ready.remote()
            except ray_errors.RayError as exc:  # ActorDiedError: restarts used up, or killed
                logger.error("%s: replica %d is gone for good: %s", self.name, rep.index, _last_line(exc))
                break
            now = time.monotonic()
            if self._closed:
                break
            if now >= deadline:
                logger.error("%s: replica %d did not restart within %.0f s; going on without it",
                             self.name, rep.index, self.startup_timeout_s)  # fmt: skip
                break
            if self._bundle_placed(rep.index):
                unplaced_since = None
            elif unplaced_since is None:
                unplaced_since = now
            elif now - unplaced_since >= self.placement_timeout_s:
                logger.error(
                    "%s: replica %d lost its node and no live node could take it within %.0f s "
                    "(it needs %s); going on with the other replicas",
                    self.name, rep.index, self.placement_timeout_s, self._placement_group.bundle_specs[rep.index],
                )  # fmt: skip
                break
        if not self._closed:
            try:
                ray.kill(rep.handle, no_restart=True)
            except (ray_errors.RayError, ValueError):
                pass
        with self._cond:
            self._set_status(rep, "dead")
            orphans: list[_Request] = []
            if all(r.status == "dead" for r in self._replicas):
                orphans = list(self._pending)
                self._pending.clear()
        for q in orphans:
            self._fail(q, f"every replica of {self.name} died (max_restarts={self.max_restarts} each)")
        return False

    def _bundle_placed(self, index: int) -> bool:
        """Does replica ``index``'s placement bundle sit on a live node? (False while Ray looks for
        a new node after losing one.)"""
        from ray.util.placement_group import placement_group_table

        try:
            table = placement_group_table(self._placement_group)
        except ray_errors.RayError:
            return True  # cannot tell: leave it to startup_timeout_s
        return bool(table.get("bundles_to_node_id", {}).get(index))


def _last_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's text (Ray errors carry whole tracebacks)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


@atexit.register
def _shutdown_live_pools() -> None:
    for pool in list(_LIVE_POOLS):
        pool.shutdown()
