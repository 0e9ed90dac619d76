"""The evaluation harness: several runs (modes, per-run overrides) side by side on the same problems.

Vocabulary:
- **run**: one way of generating, named by its spec string, e.g. ``ar``, ``lr``, ``lr[gamma=4]``,
  ``lr[verifier=numeric,gamma=3]``: a mode from `lookahead.config.MODES` plus config overrides
  (the keys of ``--set``) passed as ``**overrides`` to `LookaheadReasoner.generate`. Overrides
  of an engine (keys under ``target.`` or ``draft.``, e.g. ``sd[target.speculation.method=draft]``)
  cannot change a loaded engine per request: such a run gets its own reasoner, built from the
  config with those keys applied (`engine_overrides`; model weights are shared where they match).
- **peer run**: ``peer:NAME`` or ``peer:NAME[key=value,...]`` (e.g. ``peer:hf-assisted``,
  ``peer:hf-prompt-lookup[prompt_lookup_num_tokens=5]``): an outside decoder a user would pick
  instead (transformers assisted generation / prompt lookup, llama.cpp; `lookahead.eval.peers`),
  on the same prompt, budget, sampling and stop rule. Its items are the peer's options or config
  keys; its records have ``mode: "peer:NAME"``. Peers are loaded once per `run_all` and run one
  job at a time in this thread (also next to a concurrent ``run_jobs``).
- **job**: one (problem, run, sample) to generate; its **key** ``(problem index, run label,
  sample)`` identifies its record.
- **record**: one JSON line of ``<out>/records.jsonl`` per job (see `make_record` for the fields).

Fairness rules: every run sees the same problems, the same token budget and the same sampling
(a run spec that overrides them gets a warning in the summary); samples are seeded
``seed + sample`` when sampling is stochastic, the same seed for every run. Jobs go problem by
problem, and the run that goes first rotates from one problem to the next, so whatever a warm
cache gives the second run of a problem is spread evenly over the runs. With ``--concurrency K``
each run's jobs are one block, K in flight, and every block starts with the target's and the
draft's prefix caches cleared (`LookaheadReasoner.clear_prefix_caches`): a block cannot rotate,
and a run after another would find the prompts, and under greedy decoding the target's very
steps, cached by the run before it. ``--equal-hardware`` is
recorded; with engine replicas (``replicas >= 1``, the Ray pool) the ``ar`` runs then get
``target.replicas + draft.replicas`` target replicas: they run after the other runs, on a second
reasoner built once the first one has been closed (with in-process engines, ``replicas = 0``,
``ar`` already has the whole device to itself and nothing changes).

Resumability: records are appended one line at a time (flush + fsync); `RecordStore` skips keys
already recorded, drops a torn last line left by a kill and any later duplicate of a key (the file
is rewritten with the first record of each key), and refuses to resume an output folder made with
other settings (``run.json``). One invocation at a time writes to a folder: `open_output` takes an
exclusive lock on ``<out>/.lock`` (``fcntl.flock``, held until the store is closed or the process
ends, crash included) and a second invocation on the same folder is refused.

Secrets (``api_key``, ``hf_token``, ...; `lookahead.config.is_secret_key`) never reach the folder:
``run.json`` and the summaries hold `LookaheadConfig.public_dict`, a run's label hides the value
of a secret override (``lr[target.api_key=***]``) and a record's ``overrides`` are `redacted`;
the engines still get the real value (`RunSpec.overrides`).

Executing jobs is pluggable: `run_sequential` is the default ``run_jobs(reasoner, jobs,
on_record)``; a concurrent scheduler (the Ray pool) can take its place as long as it calls
`execute_job` for every job and ``on_record`` with each record (from any thread).

Example:
    >>> cfg = load_config("tiny")                                           # doctest: +SKIP
    >>> runs = parse_run_specs("ar,lr[gamma=1],lr[gamma=4]", cfg)           # doctest: +SKIP
    >>> store = open_output(Path("runs/x"), settings, force_new=False)      # doctest: +SKIP
    >>> jobs = plan_jobs(problems, runs, 1, cfg, "gsm8k", done=store.keys)  # doctest: +SKIP
    >>> run_all(reasoner, jobs, store)                                       # doctest: +SKIP
"""

from __future__ import annotations

import copy
import datetime as _dt
import errno
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lookahead.answers import answers_match, extract_answer
from lookahead.config import (
    MODES,
    REQUEST_KEYS_FIXED,
    SAMPLING_SHORTHANDS,
    LookaheadConfig,
    configured,
    is_secret_key,
    parse_override,
    redact_text,
    redacted,
)
from lookahead.errors import ConfigError, DataError, LookaheadError
from lookahead.eval.peers import (
    PEER_PREFIX,
    PeerSet,
    check_peer_run,
    peer_name,
    peer_names,
    split_overrides,
)
from lookahead.eval.tasks import Problem, TaskSource

if TYPE_CHECKING:
    from typing_extensions import Self

    from lookahead.loop import LookaheadReasoner
    from lookahead.types import Result

log = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
RUN_FILE = "run.json"
BASELINE = "ar"  # the run label speedups are measured against

Key = tuple[int, str, int]  # (problem index, run label, sample)
OnRecord = Callable[[dict[str, Any]], None]
RunJobs = Callable[["LookaheadReasoner", Sequence["Job"], OnRecord], None]

FAIRNESS_KEYS = ("max_total_tokens", "max_step_tokens", *SAMPLING_SHORTHANDS)
"""Override keys (and any ``*_sampling.*`` key) that give a run another budget or sampling."""


# -- runs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One run of the comparison: a mode plus per-run config overrides."""

    label: str  # the spec string as written, e.g. "lr[gamma=4]" (secret values as ***); names the run everywhere
    mode: str  # one of lookahead.config.MODES, or "peer:NAME" (lookahead.eval.peers)
    overrides: dict[str, Any] = field(default_factory=dict)  # config keys for generate(**overrides); peers: + options

    @property
    def peer(self) -> str | None:
        """The peer's NAME for a ``peer:NAME`` run, None for our own modes."""
        return peer_name(self.mode)

    def config_overrides(self) -> dict[str, Any]:
        """The overrides that are config keys (a peer run's other items are the peer's options)."""
        return split_overrides(self.peer, self.overrides)[1] if self.peer else dict(self.overrides)

    def engine_overrides(self) -> dict[str, Any]:
        """The overrides that change an engine (``target.*``, ``draft.*``): they need their own reasoner.
        A peer loads its own models, so it never needs another reasoner."""
        if self.peer:
            return {}
        return {k: v for k, v in self.overrides.items() if is_engine_key(k)}

    def changes_fairness(self) -> list[str]:
        """Override keys that give this run another token budget or sampling than the others."""
        keys = self.config_overrides()
        return [k for k in keys if k in FAIRNESS_KEYS or k.split(".")[0].endswith("_sampling")]


def is_engine_key(key: str) -> bool:
    """``target.speculation.method`` -> True: the key configures an engine, not a request."""
    return key.split(".", 1)[0] in REQUEST_KEYS_FIXED


def split_top_level(text: str, where: str) -> list[str]:
    """Split a run list on commas outside ``[...]`` (``"ar,lr[gamma=1,width=2]"`` -> 2 runs);
    unbalanced brackets raise a `ConfigError` naming ``where`` (the option, e.g. ``--modes``)."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"{where}: unbalanced ']' in {redact_text(text)!r}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise ConfigError(f"{where}: unbalanced '[' in {redact_text(text)!r}; write e.g. lr[gamma=4]")
    parts.append(current)
    return [p.strip() for p in parts]


def parse_run_specs(text: str, config: LookaheadConfig) -> list[RunSpec]:
    """``"ar,lr[gamma=1],lr[gamma=4,verifier=numeric],peer:hf-assisted"`` -> runs; every override
    (and every peer option) is validated now."""
    runs: list[RunSpec] = []
    for written in split_top_level(text or "", "--modes"):
        if not written:
            raise ConfigError(f"--modes {redact_text(text)!r} has an empty run; write e.g. --modes ar,lr")
        spec = redact_text(written)  # the label: what every file and message shows
        mode, bracket, rest = written.partition("[")
        mode = mode.strip()
        peer = peer_name(mode)
        if mode not in MODES and peer is None:
            raise ConfigError(
                f"--modes: run {spec!r}: mode {mode!r} is unknown; choose one of {', '.join(MODES)}, "
                f"or a peer: {', '.join(PEER_PREFIX + p for p in peer_names())}"
            )
        overrides: dict[str, Any] = {}
        if bracket:
            if not rest.endswith("]"):
                raise ConfigError(f"--modes: run {spec!r} must end with ']', e.g. lr[gamma=4]")
            body = rest[:-1]
            for item in (i.strip() for i in body.replace(";", ",").split(",")):
                if not item:
                    continue
                key, value = parse_override(item)
                if key == "mode":
                    raise ConfigError(f"--modes: run {spec!r}: give the mode before '[' (e.g. lr[gamma=4]), not mode=")
                overrides[key] = value
        if peer is not None:
            check_peer_run(peer, overrides, config, f"--modes: run {spec!r}")
        else:
            try:
                configured(config, overrides)
            except ConfigError as exc:
                raise ConfigError(f"--modes: run {spec!r}: {exc}") from None
        if any(r.label == spec for r in runs):
            raise ConfigError(f"--modes: run {spec!r} is listed twice")
        runs.append(RunSpec(spec, mode, overrides))
    return runs


def apply_task_prompt(config: LookaheadConfig, source: TaskSource) -> LookaheadConfig:
    """Use the task's own prompt template unless the config sets one of its own (not the default)."""
    if source.prompt_template and config.prompt_template == LookaheadConfig().prompt_template:
        config = copy.deepcopy(config)
        config.prompt_template = source.prompt_template
        config.validate()
    return config


def equal_hardware_config(config: LookaheadConfig) -> tuple[LookaheadConfig, bool]:
    """The config the ``ar`` runs get under ``--equal-hardware``, and whether it differs.

    With replicas (Ray actors), ``ar`` gets the draft's replicas on top of its own target
    replicas. With in-process engines (``replicas = 0``) ``ar`` already runs alone on the device.
    """
    if config.draft.replicas <= 0:
        return config, False
    ar_config = copy.deepcopy(config)
    ar_config.target.replicas = max(config.target.replicas, 1) + config.draft.replicas
    ar_config.mode = "ar"
    return ar_config.validate(), True


# -- jobs and records ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One generation to run and record."""

    problem: Problem  # the question and its reference
    run: RunSpec  # how to generate
    sample: int  # 0-based sample of this (problem, run)
    seed: int | None  # sampler seed of this sample (None: greedy, the config's own seed)
    task: str  # task spec, copied into the record

    @property
    def key(self) -> Key:
        return (self.problem.index, self.run.label, self.sample)

    def overrides(self) -> dict[str, Any]:
        """Keyword overrides for `LookaheadReasoner.generate` (engine keys are the reasoner's own)."""
        out = {k: v for k, v in self.run.overrides.items() if not is_engine_key(k)}
        if self.seed is not None:
            out["seed"] = self.seed
        return out


def record_key(record: dict[str, Any]) -> Key:
    return (int(record["problem"]), str(record["run"]), int(record["sample"]))


def _sample_seed(config: LookaheadConfig, run: RunSpec, sample: int) -> int | None:
    effective = configured(config, run.config_overrides())
    if effective.target_sampling.temperature == 0 and effective.draft_sampling.temperature == 0:
        return None  # greedy: samples are reruns (for timing), seeds change nothing
    base = effective.target_sampling.seed or 0
    return base + sample


def plan_jobs(
    problems: Sequence[Problem],
    runs: Sequence[RunSpec],
    samples: int,
    config: LookaheadConfig,
    task: str,
    done: set[Key] | frozenset[Key] = frozenset(),
) -> list[Job]:
    """Jobs not yet recorded, problem by problem; the first run rotates with the problem index."""
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1 (got {samples})")
    seeds = {(run.label, s): _sample_seed(config, run, s) for run in runs for s in range(samples)}
    jobs = []
    for problem in problems:
        shift = problem.index % len(runs)
        for run in [*runs[shift:], *runs[:shift]]:
            for sample in range(samples):
                job = Job(problem, run, sample, seeds[(run.label, sample)], task)
                if job.key not in done:
                    jobs.append(job)
    return jobs


def now() -> str:
    """The time now (UTC, ISO 8601 to the second): the ``time`` of records and run.json entries."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _base_record(job: Job) -> dict[str, Any]:
    p = job.problem
    return {
        "problem": p.index,  # 0-based row of the set (the record key, with run and sample)
        "run": job.run.label,
        "sample": job.sample,
        "mode": job.run.mode,
        "overrides": redacted(job.run.overrides),  # secrets as ***
        "seed": job.seed,
        "task": job.task,
        "source_id": p.source_id,  # the set's own id (aime24 id, math500 unique_id)
        "line": p.line,  # 1-based line in the local file
        "question": p.question,
        "reference": p.reference,  # None: the reference could not be parsed (not graded)
    }


SPEC_PREFIX = "spec_"  # stats keys of token-level speculation (tokens proposed / accepted / ...)


def make_record(job: Job, result: Result) -> dict[str, Any]:
    """The record of a finished generation: answer and grade, tokens, times, acceptance."""
    stats = result.stats
    answer = extract_answer(result.text)
    reference = job.problem.reference
    record = _base_record(job)
    record.update(
        status="ok",
        error=None,
        answer=answer,  # extracted final answer (None: the completion states none)
        correct=answers_match(answer, reference) if reference is not None else None,
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        wall_time_s=round(result.wall_time_s, 6),  # seconds
        draft_s=stats.get("draft_s", 0.0),
        target_s=stats.get("target_s", 0.0),
        verify_s=stats.get("verify_s", 0.0),
        other_s=stats.get("other_s", 0.0),
        rounds=result.rounds,
        committed_steps=stats.get("committed_steps", len(result.steps)),
        drafted_steps=result.drafted_steps,
        accepted_steps=result.accepted_steps,
        acceptance_by_depth=stats.get("acceptance_by_depth", []),
        verifier_accept_by_depth=stats.get("verifier_accept_by_depth", []),
        spec={k: v for k, v in stats.items() if k.startswith(SPEC_PREFIX)},  # token-level speculation
        stats=stats,  # `RoundStats.summary()` (+ other_s) as the loop reported it
        completion=result.text,
        trace=[  # the committed steps, with the (draft step, target step) pair each one came from
            {
                "round": step.round,
                "depth": step.depth,
                "source": step.source,
                "tokens": step.tokens,
                "draft": step.draft_text,
                "target": step.target_text,
                "accepted": None if step.verdict is None else step.verdict.accepted,
                "score": None if step.verdict is None else step.verdict.score,
            }
            for step in result.steps
        ],
        time=now(),
    )
    return record


def error_record(job: Job, error: str, seconds: float) -> dict[str, Any]:
    """The record of a generation that raised a `LookaheadError`: counted, not graded as right."""
    record = _base_record(job)
    record.update(
        status="error",
        error=error,
        answer=None,
        correct=False if job.problem.reference is not None else None,
        finish_reason="error",
        prompt_tokens=0,
        completion_tokens=0,
        wall_time_s=round(seconds, 6),
        draft_s=0.0,
        target_s=0.0,
        verify_s=0.0,
        other_s=0.0,
        rounds=0,
        committed_steps=0,
        drafted_steps=0,
        accepted_steps=0,
        acceptance_by_depth=[],
        verifier_accept_by_depth=[],
        spec={},
        stats={},
        completion="",
        time=now(),
    )
    return record


def execute_job(reasoner: LookaheadReasoner, job: Job, peers: PeerSet | None = None) -> dict[str, Any]:
    """Generate one job and return its record; a `LookaheadError` becomes an error record.

    A peer run goes to its peer in ``peers`` (loaded there on first use); without ``peers`` the
    peer is loaded from the reasoner's config for this job alone.
    """
    start = time.perf_counter()
    owned = None
    try:
        if job.run.peer is not None:
            if peers is None:
                peers = owned = PeerSet(reasoner.config)
            peer = peers.get(job.run.peer, job.run.overrides)
            start = time.perf_counter()  # loading a peer is not the job's time
            result = peer.generate(job.problem.question, seed=job.seed)
        else:
            result = reasoner.generate(job.problem.question, mode=job.run.mode, **job.overrides())
    except LookaheadError as exc:
        return error_record(job, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
    finally:
        if owned is not None:
            owned.close()
    return make_record(job, result)


def run_sequential(reasoner: LookaheadReasoner, jobs: Sequence[Job], on_record: OnRecord) -> None:
    """The default ``run_jobs``: one job after another in this thread."""
    for job in jobs:
        on_record(execute_job(reasoner, job))


def pool_runner(concurrency: int) -> RunJobs:
    """The ``run_jobs`` for ``concurrency > 1``: K problems in flight (`lookahead.scheduler.run_many`).

    The engines must be thread-safe (Ray pools: ``--set target.replicas=N --set draft.replicas=N``);
    otherwise `run_many` raises a ConfigError that says so.
    """
    from lookahead.scheduler import Job as ScheduledJob
    from lookahead.scheduler import run_many

    def run_jobs(reasoner: LookaheadReasoner, jobs: Sequence[Job], on_record: OnRecord) -> None:
        def deliver(outcome: Any) -> None:
            job = jobs[outcome.index]
            if outcome.ok:
                on_record(make_record(job, outcome.result))
            else:
                on_record(error_record(job, f"{type(outcome.error).__name__}: {outcome.error}", outcome.latency_s))

        scheduled = [ScheduledJob(j.problem.question, j.run.mode, j.overrides()) for j in jobs]
        run_many(reasoner, scheduled, concurrency, deliver)

    return run_jobs


def warm_up(reasoner: LookaheadReasoner, question: str, runs: Sequence[RunSpec], tokens: int = 32) -> None:
    """One short untimed generation per distinct mode, so one-time costs (loading, kernels,
    batch-cost measurement) land in no run's time. Errors are left to the real jobs.
    Peer runs are warmed up by their `PeerSet` instead."""
    for mode in dict.fromkeys(r.mode for r in runs if r.peer is None):
        try:
            reasoner.generate(question, mode=mode, max_total_tokens=tokens)
        except LookaheadError:
            pass


# -- the output folder --------------------------------------------------------------------------
@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends (main thread only), so a record line is never cut by it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(*caught[0])


class RecordStore:
    """``records.jsonl``: append-only, one fsync'ed line per record, keyed by (problem, run, sample).

    Opening it drops a torn last line (a kill in the middle of a write) so the next append starts
    on a clean line, and rewrites the file without duplicate keys (two invocations that once wrote
    the same folder at the same time; the first record of each key is kept); a record whose key is
    already stored is never written twice. `close` releases the folder's lock (`open_output`).
    """

    def __init__(self, path: Path, lock: Any = None) -> None:
        self.path = path  # the JSONL file
        self.records: list[dict[str, Any]] = []  # every record in the file, in file order, one per key
        self.keys: set[Key] = set()  # their keys
        self.repaired = 0  # bytes of a torn last line dropped when opening
        self.duplicates = 0  # lines dropped when opening because their key came earlier in the file
        self._lock = threading.Lock()  # appends may come from a pool's threads
        self._folder_lock = lock  # the open <out>/.lock holding the folder's flock (None: not locked)
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if end < len(data):
            self.repaired = len(data) - end
        kept: list[str] = []
        for number, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = record_key(record)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise DataError(
                    f"{self.path}:{number}: not a valid record (edited by hand?); remove the line, "
                    "or start over with --force-new"
                ) from None
            if key in self.keys:
                self.duplicates += 1
                continue
            self.keys.add(key)
            self.records.append(record)
            kept.append(line)
        if self.duplicates:
            self._rewrite(kept)
        elif self.repaired:
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())

    def _rewrite(self, lines: list[str]) -> None:
        """Replace the file by ``lines`` at once (a temporary file renamed over it)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with _interrupts_deferred():
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.writelines(line + "\n" for line in lines)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)

    def append(self, record: dict[str, Any]) -> bool:
        """Write one record (flush + fsync); False if its key was already stored."""
        key = record_key(record)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if key in self.keys:
                return False
            with _interrupts_deferred():
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(line)
                    handle.flush()
                    os.fsync(handle.fileno())
                self.keys.add(key)
                self.records.append(record)
        return True

    def close(self) -> None:
        """Release the output folder's lock (also released when the process ends)."""
        if self._folder_lock is not None:
            self._folder_lock.close()
            self._folder_lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


LOCK_FILE = ".lock"  # in the output folder: flock'ed by the invocation writing there


def output_folder(out: Path, holds: str = "the records and reports") -> Path:
    """Create ``out`` (and its parents) as a writable folder, or raise a one-line `ConfigError`:
    ``out`` is a file, a parent is a file, or it cannot be created or written (permissions, ...)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (it will hold {holds})")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            why = "a part of the path is a file"
        raise ConfigError(f"--out {out} cannot be created ({why}); give a folder you can write to") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} is not writable (permission denied); give a folder you can write to")
    return out


def lock_folder(out: Path) -> Any:
    """Take ``out/.lock`` exclusively (non-blocking flock) and return its open file, or raise a
    `ConfigError` when another invocation holds it. Closing the file (or the process ending, a
    crash included) releases it. Without ``fcntl`` (Windows) nothing is locked (None)."""
    try:
        import fcntl
    except ImportError:
        return None
    path = out / LOCK_FILE
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 -- held open: the lock lives as long as the file
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot open its lock file {path} ({exc.strerror}); give a folder you can write to") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise ConfigError(
            f"another lookahead invocation{who} is writing to {out}; wait for it to finish or give another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


RESUME_IDENTITY = ("task", "location", "split", "question_field", "answer_field", "config", "equal_hardware", "concurrency")
"""run.json keys that must match to resume; the rest (--limit, --offset, --modes, --samples) only
select which keys to run, so changing them on a resume adds records without mixing settings."""


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    flat_old = _flatten({k: old.get(k) for k in RESUME_IDENTITY})
    flat_new = _flatten({k: new.get(k) for k in RESUME_IDENTITY})
    flat_old.pop("config.mode", None)  # the runs name their modes; the config's own mode is unused
    flat_new.pop("config.mode", None)
    # secrets are stored as *** (older folders: in clear); a changed key is not another evaluation
    keys = sorted(k for k in set(flat_old) | set(flat_new) if not is_secret_key(k.rsplit(".", 1)[-1]))
    return [f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in keys if flat_old.get(k) != flat_new.get(k)]


def _hidden_command(invocation: Any) -> Any:
    """An earlier ``invocations`` entry of run.json with any secret in its command line as ***
    (folders written before secrets were hidden held them in clear)."""
    if isinstance(invocation, dict) and isinstance(invocation.get("command"), str):
        return {**invocation, "command": redact_text(invocation["command"])}
    return invocation


def open_output(out: Path, settings: dict[str, Any], force_new: bool = False) -> RecordStore:
    """Prepare ``out`` for this invocation and return its record store.

    A fresh folder gets ``run.json``; a folder from an earlier invocation is resumed when its
    settings match, refused otherwise (`ConfigError`); ``force_new`` moves its files into
    ``out/previous-<time>/`` and starts over. The folder's lock (`lock_folder`) is taken first
    and held by the returned store: a second invocation on the same folder gets a `ConfigError`.
    """
    output_folder(out)
    lock = lock_folder(out)  # before anything is read or moved: one invocation per folder
    try:
        return _open_locked(out, settings, force_new, lock)
    except BaseException:
        if lock is not None:
            lock.close()
        raise


def _open_locked(out: Path, settings: dict[str, Any], force_new: bool, lock: Any) -> RecordStore:
    run_file, records_file = out / RUN_FILE, out / RECORDS_FILE
    if force_new and (run_file.exists() or records_file.exists()):
        backup = out / f"previous-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        backup.mkdir()
        for item in out.iterdir():
            if item.is_file() and item.name != LOCK_FILE:
                shutil.move(str(item), backup / item.name)
    if run_file.exists():
        try:
            old = json.loads(run_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{run_file} is not valid JSON ({exc}); use a new --out or --force-new") from None
        diffs = _differences(old, settings)
        if diffs:
            shown = "; ".join(diffs[:5]) + (f"; ... ({len(diffs)} differences)" if len(diffs) > 5 else "")
            raise ConfigError(
                f"{out} holds an evaluation with other settings ({shown}); resuming would mix them. "
                "Use a new --out, or --force-new to move the old files aside and start over"
            )
        history = [_hidden_command(item) for item in old.get("invocations", [])]
    elif records_file.exists() and records_file.stat().st_size > 0:
        raise ConfigError(
            f"{records_file} exists but {run_file} does not, so its settings are unknown; "
            "use a new --out, or --force-new to move the old files aside and start over"
        )
    else:
        history = []
    stored = dict(settings)
    stored["invocations"] = [*history, {"time": now(), "command": settings.get("command")}]
    tmp = run_file.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(stored, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, run_file)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write {run_file.name} ({exc.strerror or exc}); give a folder you can write to") from None
    return RecordStore(records_file, lock)


def selected_records(
    store: RecordStore, problems: Sequence[Problem], runs: Sequence[RunSpec], samples: int
) -> list[dict[str, Any]]:
    """The stored records this invocation asks for (its problems, runs and samples)."""
    indices = {p.index for p in problems}
    labels = {r.label for r in runs}
    return [
        r for r in store.records if r["problem"] in indices and r["run"] in labels and int(r["sample"]) < samples
    ]


def reasoner_mode(runs: Sequence[RunSpec]) -> str:
    """The mode to build the evaluation's reasoner with: the first of our runs that drafts (so its
    draft loads up front), else ``ar``. Peer runs load their own models."""
    return next((r.mode for r in runs if r.peer is None and r.mode != BASELINE), BASELINE)


def baseline_label(runs: Sequence[RunSpec]) -> str | None:
    """The run speedups are measured against: ``ar`` without overrides, if it is among the runs."""
    return next((r.label for r in runs if r.mode == BASELINE and not r.overrides), None)


def run_all(
    reasoner: LookaheadReasoner,
    jobs: Sequence[Job],
    store: RecordStore,
    run_jobs: RunJobs = run_sequential,
    on_record: OnRecord | None = None,
    ar_reasoner: Callable[[], LookaheadReasoner] | None = None,
    warmup: bool = True,
) -> None:
    """Run ``jobs`` with ``run_jobs``, storing every record before ``on_record`` sees it.

    ``ar_reasoner`` (``--equal-hardware`` with replicas) builds the reasoner of the ``ar`` jobs:
    they then run after the others, once ``reasoner`` has been closed and its hardware freed.
    """

    def record(rec: dict[str, Any]) -> None:
        if store.append(rec) and on_record is not None:
            on_record(rec)

    def go(target: LookaheadReasoner, batch: Sequence[Job]) -> None:
        if not batch:
            return
        ours = [j for j in batch if j.run.peer is None]
        theirs = [j for j in batch if j.run.peer is not None]  # peer runs
        if theirs or any(j.run.engine_overrides() for j in ours):
            with _EngineVariants(target) as variants, PeerSet(target.config) as peers:
                if warmup:
                    for group in _groups(ours):
                        warm_up(variants.get(group[0].run), group[0].problem.question, [j.run for j in group])
                    for job in {j.run.label: j for j in reversed(theirs)}.values():  # the first job of each peer run
                        peers.warm_up(job.run.peer, job.run.overrides, job.problem.question)
                if run_jobs is run_sequential:  # keep the per-problem rotation across reasoners and peers
                    for job in batch:
                        record(execute_job(variants.get(job.run), job, peers))
                else:  # a concurrent runner drives one reasoner and one run at a time; peers run one job at a time
                    for group in _groups(ours):
                        for block in _by_run(group):
                            run_block(variants.get(block[0].run), block)
                    for job in theirs:
                        record(execute_job(target, job, peers))
            return
        if warmup:
            warm_up(target, batch[0].problem.question, [j.run for j in batch])
        if run_jobs is run_sequential:
            run_jobs(target, batch, record)
            return
        for block in _by_run(batch):
            run_block(target, block)

    def run_block(target: LookaheadReasoner, block: Sequence[Job]) -> None:
        """One run's jobs, K in flight, from cold prefix caches: a run after another would otherwise
        find the problems' prompts (and, under greedy decoding, the target's very steps) cached by
        the run before it, and its times would be shorter for that alone."""
        for role, cleared in target.clear_prefix_caches().items():
            if not cleared and role not in uncleared:
                uncleared.add(role)
                log.warning(
                    "the %s engine's prefix cache cannot be cleared between runs: a run may find prompts "
                    "cached by the run before it", role,
                )
        run_jobs(target, block, record)

    uncleared: set[str] = set()

    if ar_reasoner is None:
        go(reasoner, jobs)
        return
    go(reasoner, [j for j in jobs if j.run.mode != BASELINE])
    later = [j for j in jobs if j.run.mode == BASELINE]
    if later:
        reasoner.close()
        with ar_reasoner() as ar:
            go(ar, later)


def _by_run(jobs: Sequence[Job]) -> list[list[Job]]:
    """Jobs by run, in first-seen order: a concurrent runner runs each run's jobs as one block, K of
    them in flight, so a run's wall times are its own under that load (runs that shared the batches
    would have timed each other's rows)."""
    return _grouped(jobs, lambda job: job.run.label)


def _groups(jobs: Sequence[Job]) -> list[list[Job]]:
    """Jobs by their run's engine overrides, in first-seen order."""
    return _grouped(jobs, lambda job: repr(sorted(job.run.engine_overrides().items())))


def _grouped(jobs: Sequence[Job], key: Callable[[Job], str]) -> list[list[Job]]:
    out: dict[str, list[Job]] = {}
    for job in jobs:
        out.setdefault(key(job), []).append(job)
    return list(out.values())


class _EngineVariants:
    """The base reasoner plus one reasoner per distinct set of engine overrides, built on first use
    from the base reasoner's config and closed on exit (the base one is left to its owner)."""

    def __init__(self, base: LookaheadReasoner) -> None:
        self.base = base
        self._built: dict[str, LookaheadReasoner] = {}

    def get(self, run: RunSpec) -> LookaheadReasoner:
        overrides = run.engine_overrides()
        if not overrides:
            return self.base
        key = repr(sorted(overrides.items()))
        if key not in self._built:
            from lookahead.loop import LookaheadReasoner

            config = configured(self.base.config, {"mode": run.mode, **overrides})
            self._built[key] = LookaheadReasoner.from_config(config)
        return self._built[key]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        for reasoner in self._built.values():
            reasoner.close()
