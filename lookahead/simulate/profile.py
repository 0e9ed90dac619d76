"""A cost profile: what `lookahead simulate` models, every number with where it comes from.

A profile is a YAML file (the shipped ones are in ``lookahead/profiles/``; ``lookahead profile``
writes one from your own engines). It holds:

- ``target``, ``draft`` (`EngineCosts`): per model, the device it runs on, how that device batches
  concurrent calls, the seconds of one decode step by the rows in the batch (the **batch-cost
  curve**), the seconds per prompt token not in the prefix cache (prefill), a fixed cost per call,
  the cost of one token-speculation verification pass relative to a decode step, with how it grows
  with the rows of the pass (``spec_pass``, `SPEC_PASSES`), and for a ``joined`` engine what a call
  joining its running loop costs the loop (``join_s``, by the rows live);
- ``judge`` (`JudgeCosts`): the verifier's seconds per call and per judged pair, and its device;
- ``workloads`` (`Workload`, by name): the problems (prompt tokens, steps per problem, tokens per
  step, or the measured step lengths of real problems), the step acceptance per lookahead depth
  and the token-level speculation acceptance (tokens committed per verification pass);
- ``config``: `lookahead.config.LookaheadConfig` keys for every simulated run (γ, step cap, ...);
  ``runs``: the runs simulated by default; ``reference_run`` and ``our_runs``: the reference
  implementation's configuration and ours, compared side by side; ``published``: speedups
  published for this setting, to put the simulation next to.

Every section has a ``sources`` mapping: field name -> where the number comes from ("published:
...", "measured: ...", or "assumed: ..." with the reasoning). `Profile.inputs` flattens the
numbers and their sources for the report; a number without a source is reported as "not stated".

Bad input (a missing or negative cost, a batch curve that decreases, an acceptance outside
[0, 1], an unknown key) raises `ConfigError` with one line naming the field and the fix.

Example:
    >>> profile = load_profile("paper-qwen3-32b-h100")
    >>> profile.target.step_s(8) >= profile.target.step_s(1)
    True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lookahead.errors import ConfigError

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
BATCHING = ("continuous", "merged", "joined")
"""How a device runs concurrent calls: ``continuous`` (a server such as SGLang or vLLM: rows join
the running batch at the next decode step and leave when done), ``merged`` (an in-process engine
behind the reasoner's batcher: one call at a time, the calls waiting when it starts merged into
it, up to ``max_batch_rows`` rows; every row of a call returns when the call ends) or ``joined``
(an in-process engine whose plain calls let later calls join its running decode loop between
forward passes, each caller handed its rows as they end: the HF engine behind the batcher;
its token-speculation and seeded calls merge per call)."""
SPEC_PASSES = ("memory-bound", "compute-bound")
"""What a token-speculation verification pass over n rows costs (``spec_pass``): ``memory-bound``
(a GPU: the weights and each row's KV cache are read once per pass however many tokens it feeds, so
the pass costs ``spec_step_cost`` x the decode step of n rows) or ``compute-bound`` (a CPU: a forward
pass costs what its tokens cost. A row proposes ``spec_num_tokens`` tokens in a share q of its passes
(the n-gram lookup found a match) and none in the others; a pass in which some row proposes feeds
every row ``1 + spec_num_tokens`` columns (the batch is padded to its widest row) and costs the
decode step of n (1 + spec_num_tokens) rows, one in which none does is a plain decode step of n
rows. q is what makes one row's pass cost ``spec_step_cost`` x its decode step (`EngineCosts.spec_share`);
over n rows some row proposes with probability 1 - (1 - q)^n)."""


@dataclass
class EngineCosts:
    """What one call of a model costs on its device (seconds), and how the device batches."""

    model: str  # what the numbers describe: model, precision, parallelism, hardware, server
    device: str  # device group; engines naming the same device share its time (one batch at a time)
    batching: str  # "continuous", "merged" or "joined" (see BATCHING)
    decode_s: dict[int, float]  # seconds of one decode step by rows in the batch (s); sizes between/after: linear
    prefill_s_per_token: float  # seconds per prompt token not in the prefix cache (s)
    call_s: float = 0.0  # fixed seconds per call (request handling, scheduling) (s)
    max_batch_rows: int = 256  # most rows one batch holds (rows); more wait for the next one
    spec_step_cost: float = 1.2  # one token-speculation verification pass / one plain decode step (ratio)
    spec_num_tokens: int = 4  # most tokens proposed per row and verification pass (tokens)
    spec_pass: str = "memory-bound"  # how a verification pass scales with its rows (see SPEC_PASSES)
    join_s: dict[int, float] = field(default_factory=dict)  # joined: one call joining a running loop of n rows (s); {}: call_s
    sources: dict[str, str] = field(default_factory=dict)  # field -> where its number comes from

    def verify_s(self, rows: float) -> float:
        """Seconds of one token-speculation verification pass over ``rows`` rows (``spec_pass``, `SPEC_PASSES`);
        one row's pass costs ``spec_step_cost`` x its decode step either way."""
        if self.spec_pass != "compute-bound":
            return self.spec_step_cost * self.step_s(rows)
        width = 1 + self.spec_num_tokens
        share = self.spec_share()
        if share > 1:  # one row's pass costs more than its tokens: the rest is overhead, charged in proportion
            return self.step_s(rows * width) * self.spec_step_cost * self.step_s(1) / self.step_s(width)
        wide = 1 - (1 - share) ** rows  # some row proposes: the batch is as wide as its widest row
        return wide * self.step_s(rows * width) + (1 - wide) * self.step_s(rows)

    def spec_share(self) -> float:
        """The compute-bound model's share of a row's passes that feed proposed tokens (``1 +
        spec_num_tokens`` tokens; the others are plain decode steps): the share that makes one row's
        pass cost ``spec_step_cost`` x its decode step on this curve (above 1: the pass costs more than
        its tokens)."""
        one, wide = self.step_s(1), self.step_s(1 + self.spec_num_tokens)
        if wide <= one:
            return math.inf if self.spec_step_cost > 1 else 0.0
        return (self.spec_step_cost - 1) * one / (wide - one)

    def step_s(self, rows: float) -> float:
        """Seconds of one decode step with ``rows`` rows: the curve, linear between and past its points."""
        return on_curve(self.decode_s, rows)

    def join_cost(self, rows: float) -> float:
        """Seconds a call joining a running decode loop of ``rows`` rows costs it, beyond its uncached
        prompt tokens (``join_s``; without it, a call's ``call_s``)."""
        return on_curve(self.join_s, rows) if self.join_s else self.call_s

    def batch_costs(self, largest: int = 64) -> list[float]:
        """Seconds of one decode step by batch size, index 0 unused (`EngineBase.batch_costs`)."""
        return [math.inf] + [self.step_s(k) for k in range(1, max(largest, max(self.decode_s)) + 1)]


def on_curve(points: dict[int, float], rows: float) -> float:
    """``points`` (seconds by rows) at ``rows``: linear between the points and past the last two,
    never below the first."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1 (got {rows})")
    sizes = sorted(points)
    if rows in points:
        return points[rows]  # type: ignore[index]
    if len(sizes) == 1:
        return points[sizes[0]] * rows / sizes[0]
    lo = max((s for s in sizes if s < rows), default=sizes[0])
    hi = min((s for s in sizes if s > rows), default=sizes[-1])
    if lo == hi:  # past the last point: the slope of the last two
        lo, hi = sizes[-2], sizes[-1]
    slope = (points[hi] - points[lo]) / (hi - lo)
    return max(points[lo] + slope * (rows - lo), points[sizes[0]])


@dataclass
class JudgeCosts:
    """The verifier's cost: seconds per call plus seconds per judged (draft, target) pair."""

    model: str  # what the numbers describe ("exact string check", "Qwen2.5-7B-Instruct on 1 x H100 (vLLM)", ...)
    device: str  # device group (a judge on the target's device shares its time)
    call_s: float  # fixed seconds per verifier call (s)
    pair_s: float  # seconds per judged pair (s)
    max_batch_rows: int = 256  # most pairs one call holds (pairs)
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class Workload:
    """The problems and how the draft fares on them.

    Either ``problems`` (measured: the target-token length of each step of each problem, as
    ``lookahead profile`` records it) or ``steps`` and ``step_tokens`` (means; each problem and
    step varies by up to ``spread`` around them, the same draw for every run).
    """

    prompt_tokens: int  # tokens of the rendered prompt (tokens)
    acceptance: list[float]  # conditional step acceptance at depth 1, 2, ... (probability); deeper: the last
    steps: int = 0  # steps per problem, mean (steps)
    step_tokens: int = 0  # tokens per step, mean (tokens)
    spread: float = 0.5  # each problem's steps and each step's tokens vary within ±spread of the mean (fraction)
    problems: list[list[int]] = field(default_factory=list)  # measured: step lengths per problem (tokens)
    draft_complete: float = 1.0  # P(a draft step ends on the delimiter within the step cap) (probability)
    draft_incomplete_tokens: int = 0  # tokens an incomplete draft step runs before it stops (tokens); 0 = the step cap
    target_acceptance_length: float = 1.0  # token SD in target calls: tokens committed per verification pass
    draft_acceptance_length: float = 1.0  # token SD in draft calls (lr+sd): tokens committed per pass
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class Profile:
    """A complete simulation input (module docstring)."""

    name: str  # short name, e.g. "paper-qwen3-32b-h100"
    description: str  # one paragraph: the setting and what it is for
    target: EngineCosts
    draft: EngineCosts
    judge: JudgeCosts
    workloads: dict[str, Workload]  # by name; the first is the default
    config: dict[str, Any] = field(default_factory=dict)  # LookaheadConfig keys of every simulated run
    runs: list[str] = field(default_factory=list)  # default runs (eval run specs, e.g. "lr[gamma=2]")
    reference_run: str | None = None  # the reference implementation's configuration, as a run spec
    our_runs: list[str] = field(default_factory=list)  # our additions, each as a run spec
    published: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> {value, source}
    sources: dict[str, str] = field(default_factory=dict)  # sources of config and runs choices

    def workload(self, name: str | None = None) -> tuple[str, Workload]:
        """The named workload (default: the first), with its name; an unknown name raises."""
        if name is None:
            name = next(iter(self.workloads))
        if name not in self.workloads:
            raise ConfigError(f"workload {name!r} is not in profile {self.name!r}; choose one of {', '.join(self.workloads)}")
        return name, self.workloads[name]

    def inputs(self, workload: str | None = None) -> list[dict[str, Any]]:
        """Every number the simulation uses, with its source: ``[{input, value, source}]``."""
        name, load = self.workload(workload)
        out: list[dict[str, Any]] = []
        for section, obj in (("target", self.target), ("draft", self.draft), ("judge", self.judge), (f"workloads.{name}", load)):
            for f in dataclasses.fields(obj):
                if f.name == "sources":
                    continue
                value = getattr(obj, f.name)
                if f.name == "join_s" and not value:  # not measured (or no joining loop): call_s stands in
                    continue
                source = obj.sources.get(f.name, "not stated in the profile")
                out.append({"input": f"{section}.{f.name}", "value": value, "source": source})
        for key, value in self.config.items():
            out.append({"input": f"config.{key}", "value": value, "source": self.sources.get(key, "not stated in the profile")})
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- reading and checking --------------------------------------------------------------------
def profile_names() -> list[str]:
    """The shipped profiles (``lookahead/profiles/*.yaml``)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(source: str | Path) -> Profile:
    """A shipped profile by name, or a YAML file, checked (`check_profile`)."""
    path = Path(source)
    if not path.suffix and not path.exists():
        path = PROFILES_DIR / f"{source}.yaml"
        if not path.is_file():
            raise ConfigError(f"profile {str(source)!r} is neither a file nor a shipped profile; shipped: {', '.join(profile_names())}")
    if not path.is_file():
        raise ConfigError(f"profile file {path} does not exist; give a YAML file or one of {', '.join(profile_names())}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(getattr(exc, 'problem', exc)).split())})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"profile file {path} cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"profile file {path} must hold a mapping (target, draft, judge, workloads, ...)")
    return profile_from_dict(data, default_name=path.stem)


def save_profile(profile: Profile, path: Path, header: str = "") -> None:
    """Write ``profile`` as YAML (``header``: comment lines on top, e.g. the command that made it)."""
    check_profile(profile)
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    text = yaml.safe_dump(_plain(profile.to_dict()), sort_keys=False, allow_unicode=True, width=110)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(comments + text, encoding="utf-8")


def profile_from_dict(data: dict[str, Any], default_name: str = "profile") -> Profile:
    """A checked `Profile` from plain data (the YAML file's mapping)."""
    data = dict(data)
    _known(data, Profile, "")
    for key in ("target", "draft", "judge", "workloads"):
        if key not in data:
            raise ConfigError(f"the profile has no {key!r} section; see lookahead/profiles/*.yaml for one that has")
    workloads = data.pop("workloads")
    if not isinstance(workloads, dict) or not workloads:
        raise ConfigError("workloads must map a workload name to its problems, e.g. workloads: {gsm8k: {...}}")
    profile = Profile(
        name=str(data.pop("name", default_name)),
        description=str(data.pop("description", "")),
        target=_engine(data.pop("target"), "target"),
        draft=_engine(data.pop("draft"), "draft"),
        judge=_section(JudgeCosts, data.pop("judge"), "judge"),
        workloads={str(k): _workload(v, f"workloads.{k}") for k, v in workloads.items()},
        **{k: v for k, v in data.items()},
    )
    return check_profile(profile)


def _known(data: dict[str, Any], cls: type, where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown profile key {where + str(key)!r}; known keys here: {', '.join(names)}")


def _section(cls: type, data: Any, where: str) -> Any:
    """``cls`` from a mapping: unknown and missing keys named, numbers checked finite."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of its fields (got {data!r})")
    _known(data, cls, f"{where}.")
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for name in required:
        if data.get(name) is None:
            raise ConfigError(f"{where}.{name} is missing; {_HINTS.get(name, 'give it a value')}")
    for name, value in data.items():
        _finite(value, f"{where}.{name}")
    return cls(**data)


def _engine(data: Any, where: str) -> EngineCosts:
    for key in ("decode_s", "join_s"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = dict(data)
            try:
                data[key] = {int(k): v for k, v in data[key].items()}
            except (TypeError, ValueError):
                raise ConfigError(f"{where}.{key} must map a batch size (rows, an integer >= 1) to seconds, e.g. {{1: 0.015, 8: 0.016}}") from None
    return _section(EngineCosts, data, where)


def _workload(data: Any, where: str) -> Workload:
    if isinstance(data, dict) and isinstance(data.get("acceptance"), (int, float)):
        data = {**data, "acceptance": [data["acceptance"]]}
    return _section(Workload, data, where)


def _finite(value: Any, where: str) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number (got {value}); NaN and infinity are not allowed")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")


_HINTS = {
    "model": "say what the numbers describe, e.g. 'Qwen3-32B bf16, TP=2 on 2 x H100 (SGLang)'",
    "device": "name the device group it runs on, e.g. gpu0 (engines naming the same device share its time)",
    "batching": f"choose one of {', '.join(BATCHING)}",
    "decode_s": "give seconds of one decode step by rows, e.g. {1: 0.015, 8: 0.016} (measure it with lookahead profile)",
    "prefill_s_per_token": "give seconds per uncached prompt token, e.g. 0.00005 (measure it with lookahead profile)",
    "call_s": "give the fixed seconds per call, e.g. 0.01 (0 for none)",
    "pair_s": "give the seconds per judged pair, e.g. 0.003 (0 for a string check)",
    "prompt_tokens": "give the tokens of a rendered prompt, e.g. 150",
    "acceptance": "give the step acceptance per depth, e.g. [0.45, 0.45] (measure it with lookahead profile)",
}


def check_profile(profile: Profile) -> Profile:
    """Check every number of ``profile``; the first mistake raises a one-line `ConfigError`."""
    for where, engine in (("target", profile.target), ("draft", profile.draft)):
        _check_engine(engine, where)
    judge = profile.judge
    _nonnegative(judge.call_s, "judge.call_s", "seconds per verifier call")
    _nonnegative(judge.pair_s, "judge.pair_s", "seconds per judged pair")
    _at_least(judge.max_batch_rows, 1, "judge.max_batch_rows", "e.g. 256")
    for name, load in profile.workloads.items():
        _check_workload(load, f"workloads.{name}")
    for key in ("runs", "our_runs"):
        value = getattr(profile, key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of run specs, e.g. [ar, 'lr[gamma=2]']")
    if not isinstance(profile.config, dict):
        raise ConfigError("config must map LookaheadConfig keys to values, e.g. {gamma: 4, max_step_tokens: 128}")
    return profile


def _check_engine(engine: EngineCosts, where: str) -> None:
    if engine.batching not in BATCHING:
        raise ConfigError(f"{where}.batching {engine.batching!r} is unknown; choose one of {', '.join(BATCHING)}")
    if not engine.decode_s:
        raise ConfigError(f"{where}.decode_s is empty; {_HINTS['decode_s']}")
    if 1 not in engine.decode_s:
        raise ConfigError(f"{where}.decode_s has no batch size 1; give the seconds of a one-row decode step, e.g. 1: 0.015")
    previous = None
    for rows in sorted(engine.decode_s):
        _at_least(rows, 1, f"{where}.decode_s (a batch size)", "batch sizes are rows, 1 or more")
        seconds = engine.decode_s[rows]
        _nonnegative(seconds, f"{where}.decode_s[{rows}]", "seconds of one decode step")
        if seconds <= 0:
            raise ConfigError(f"{where}.decode_s[{rows}] must be > 0 (got {seconds}); a decode step takes time")
        if previous is not None and seconds < previous[1]:
            raise ConfigError(
                f"{where}.decode_s decreases: {rows} rows {seconds} s < {previous[0]} rows {previous[1]} s; more rows cannot "
                "cost less: give the cheapest batch at or above each size (an engine pads to it), or measure with lookahead profile"
            )
        previous = (rows, seconds)
    _nonnegative(engine.prefill_s_per_token, f"{where}.prefill_s_per_token", "seconds per uncached prompt token")
    _nonnegative(engine.call_s, f"{where}.call_s", "fixed seconds per call")
    if not isinstance(engine.join_s, dict):
        raise ConfigError(f"{where}.join_s must map rows in the loop to seconds, e.g. {{1: 0.04, 8: 0.06}} (measure it with lookahead profile)")
    for rows, seconds in engine.join_s.items():
        _at_least(rows, 1, f"{where}.join_s (a batch size)", "batch sizes are rows, 1 or more")
        _nonnegative(seconds, f"{where}.join_s[{rows}]", "seconds one join costs the loop")
    _at_least(engine.max_batch_rows, 1, f"{where}.max_batch_rows", "e.g. 256")
    if engine.spec_step_cost < 1:
        raise ConfigError(f"{where}.spec_step_cost must be >= 1 (got {engine.spec_step_cost}); a verification pass costs at least a decode step")
    _at_least(engine.spec_num_tokens, 1, f"{where}.spec_num_tokens", "e.g. 4")
    if engine.spec_pass not in SPEC_PASSES:
        raise ConfigError(
            f"{where}.spec_pass {engine.spec_pass!r} is unknown; choose memory-bound (a GPU) or compute-bound (a CPU)"
        )


def _check_workload(load: Workload, where: str) -> None:
    _at_least(load.prompt_tokens, 1, f"{where}.prompt_tokens", "e.g. 150")
    if not load.acceptance:
        raise ConfigError(f"{where}.acceptance is empty; {_HINTS['acceptance']}")
    for i, a in enumerate(load.acceptance):
        _probability(a, f"{where}.acceptance[{i}] (depth {i + 1})")
    _probability(load.draft_complete, f"{where}.draft_complete")
    if isinstance(load.draft_incomplete_tokens, bool) or not isinstance(load.draft_incomplete_tokens, int) or load.draft_incomplete_tokens < 0:
        raise ConfigError(f"{where}.draft_incomplete_tokens must be an integer >= 0 (got {load.draft_incomplete_tokens!r}); 0 = the step cap")
    _probability(load.spread, f"{where}.spread")
    for key in ("target_acceptance_length", "draft_acceptance_length"):
        if getattr(load, key) < 1:
            raise ConfigError(f"{where}.{key} must be >= 1 (got {getattr(load, key)}); 1 means no proposed token is ever accepted")
    if load.problems:
        for i, steps in enumerate(load.problems):
            if not steps or any(not isinstance(t, int) or t < 1 for t in steps):
                raise ConfigError(f"{where}.problems[{i}] must be a non-empty list of step lengths in tokens (integers >= 1)")
    else:
        _at_least(load.steps, 1, f"{where}.steps", "steps per problem, e.g. 30 (or give problems: measured step lengths)")
        _at_least(load.step_tokens, 2, f"{where}.step_tokens", "tokens per step, e.g. 50")


def _nonnegative(value: Any, where: str, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number: {what} (got {value!r})")
    if value < 0:
        raise ConfigError(f"{where} must be >= 0 (got {value}); it is {what}")


def _at_least(value: Any, low: int, where: str, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where} must be an integer >= {low} (got {value!r}); {hint}")


def _probability(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where} must be a probability in [0, 1] (got {value!r})")


def _plain(data: Any) -> Any:
    """YAML-safe plain data (tuples as lists, infinities dropped)."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    return data
