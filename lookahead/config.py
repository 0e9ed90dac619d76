"""Typed configuration: the one source of truth for every knob. YAML and ``--set`` are views of it.

Load a preset (a name from ``lookahead/configs/`` or a YAML path) and apply ``key=value``
overrides; dotted keys reach nested sections, values are parsed as YAML scalars.

Sampling shorthands: the top-level keys ``temperature``, ``top_p``, ``top_k`` and ``seed`` set the
draft's and the target's sampling together; the nested keys (``draft_sampling.temperature``,
``target_sampling.temperature``, ...) override each side, whatever their order on the command line.

Example:
    >>> cfg = load_config("default", ["mode=lr", "gamma=2", "temperature=0"])
    >>> cfg.gamma, cfg.target_sampling.temperature
    (2, 0.0)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from lookahead.errors import ConfigError
from lookahead.registry import ENGINE_NAMES, VERIFIER_NAMES

MODES = ("ar", "lr", "sd", "lr+sd")
"""``ar``: the target alone, step by step (the baseline). ``lr``: Lookahead Reasoning (step-level
speculation). ``sd``: the target alone with token-level speculative decoding inside each step.
``lr+sd``: both layers (token-level speculation inside every draft and target call of `lr`)."""

SPECULATION_METHODS = ("ngram", "draft")
"""Token-level speculation: ``ngram`` copies continuations of the last n-gram from the prompt and
the text so far (prompt lookup, model-free); ``draft`` lets a small model sharing the engine's
tokenizer propose tokens."""
COPY_BACKENDS = ("hf",)  # engines that can restrict their own picks (EngineConfig.copy)


def uses_step_speculation(mode: str) -> bool:
    """Does ``mode`` draft whole steps (Lookahead Reasoning)?"""
    return mode in ("lr", "lr+sd")


def uses_token_speculation(mode: str) -> bool:
    """Does ``mode`` speculate tokens inside each engine call?"""
    return mode in ("sd", "lr+sd")

SAMPLING_SHORTHANDS = ("temperature", "top_p", "top_k", "seed")
PRESETS_DIR = Path(__file__).parent / "configs"
MAX_TREE_DRAFTS = 64  # width > 1: most draft steps one tree round may draft (width + ... + width^gamma)


@dataclass
class SamplingParams:
    """How one model picks tokens."""

    temperature: float = 0.0  # 0 = greedy (argmax); > 0 samples from softmax(logits / T)
    top_p: float = 1.0  # nucleus sampling: keep the smallest token set with this much mass
    top_k: int = 0  # keep only the k most likely tokens; 0 = no limit
    seed: int | None = None  # seed of the engine's sampler; None = nondeterministic
    max_new_tokens: int = 256  # tokens per call; the loop sets it to the step cap / budget left

    def validate(self, where: str) -> None:
        if self.temperature < 0:
            raise ConfigError(f"{where}.temperature must be >= 0 (got {self.temperature}); use 0 for greedy")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{where}.top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            raise ConfigError(f"{where}.top_k must be >= 0 (got {self.top_k}); 0 disables it")
        if self.max_new_tokens < 1:
            raise ConfigError(f"{where}.max_new_tokens must be >= 1 (got {self.max_new_tokens})")


@dataclass
class SpeculationConfig:
    """Token-level speculative decoding inside one engine's calls (used in ``sd`` / ``lr+sd``)."""

    method: str = "ngram"  # "ngram" (prompt lookup, model-free) or "draft" (a small model)
    num_tokens: int = 4  # tokens proposed per verification forward pass (tokens)
    max_ngram: int = 3  # ngram: longest suffix n-gram looked up in the prompt and text (tokens)
    min_ngram: int = 1  # ngram: shortest suffix n-gram tried before giving up (tokens)
    draft_model: str | None = None  # draft: model sharing the tokenizer; None = the config's draft

    def validate(self, where: str) -> None:
        if self.method not in SPECULATION_METHODS:
            raise ConfigError(
                f"{where}.method {self.method!r} is unknown; choose one of {', '.join(SPECULATION_METHODS)}"
            )
        if self.num_tokens < 1:
            raise ConfigError(f"{where}.num_tokens must be >= 1 (got {self.num_tokens})")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ConfigError(
                f"{where}: need 1 <= min_ngram <= max_ngram (got {self.min_ngram} and {self.max_ngram})"
            )


@dataclass
class CopyConfig:
    """Copying from the context while decoding (hf engines; meant for a small draft model).

    When the last n tokens of a row (n from ``max_ngram`` down to ``min_ngram``; the longest n
    that matches wins) occurred earlier in its prompt or text, the model may only write one of
    the tokens that followed those earlier occurrences: its own pick among them (greedy: the most
    likely; sampled: sampled from its distribution over them). Where nothing matches it picks as
    usual. A reasoning target repeats names, numbers and whole sentences of the question and of
    its own earlier steps; a small draft copies them badly on its own. Applied to the target it
    would change the target's output, so `LookaheadConfig.validate` allows it on the draft only.
    ``--set draft.copy=true`` turns it on.
    """

    _primary: ClassVar[str] = "enabled"

    enabled: bool = False
    min_ngram: int = 3  # shortest suffix n-gram that counts as a match (tokens)
    max_ngram: int = 8  # longest suffix n-gram looked up (tokens)

    def validate(self, where: str) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ConfigError(
                f"{where}: need 1 <= min_ngram <= max_ngram (got {self.min_ngram} and {self.max_ngram})"
            )


@dataclass
class EngineConfig:
    """Which model runs where. ``--set draft=PATH`` is short for ``--set draft.model=PATH``."""

    _primary: ClassVar[str] = "model"

    backend: str = "hf"  # engine registry name: "hf" (in-process transformers), "fake" (tests), ...
    model: str = "smollm2-135m-instruct"  # embedded alias, local HF dir, .gguf file or hub name
    dtype: str = "float32"  # torch dtype of the weights: float32, bfloat16 or float16
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (cuda if available)
    cache_dir: str | None = None  # converted GGUF models go here; None = ~/.cache/lookahead
    prefix_cache: bool = True  # reuse the KV cache of token prefixes seen in earlier calls
    pad_batches: bool = True  # decode at the cheapest batch size >= the live rows (measured once)
    speculation: SpeculationConfig = field(default_factory=SpeculationConfig)  # token-level SD
    url: str | None = None  # remote backends: server base URL, e.g. http://127.0.0.1:30000
    api_key: str | None = None  # remote backends: bearer token; None = $LOOKAHEAD_API_KEY or none
    timeout_s: float = 120.0  # remote backends: seconds before one HTTP request gives up
    max_retries: int = 3  # remote backends: retries (with exponential backoff) per request
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific extras (e.g. sglang.Engine kwargs)
    replicas: int = 0  # 0 = one engine in this process; N >= 1 = N Ray actors (lookahead.engines.pool)
    max_batch_rows: int = 16  # pool: most rows one replica decodes in one merged call (rows)
    num_gpus: float = 0.0  # pool: GPUs reserved per replica actor (0 on CPU)
    prefix_cache_rows: int = 64  # hf: rows whose KV cache is kept across calls for prefix reuse (rows)
    prefix_cache_tokens: int = 16384  # hf: ... holding at most this many tokens in all (SmolLM2-135M fp32: 45 KiB each)
    # hf: when the model folder has output_vocab.json (drafts made by `lookahead distill`), score
    # only those token ids (the rest get -inf): a narrower output layer, a cheaper draft step.
    # false = always the full vocabulary.
    output_vocab: bool = True
    copy: CopyConfig = field(default_factory=CopyConfig)  # hf: copy n-gram continuations from the context

    def validate(self, where: str) -> None:
        if self.backend not in ENGINE_NAMES:
            raise ConfigError(
                f"{where}.backend {self.backend!r} is unknown; choose one of {', '.join(ENGINE_NAMES)}"
            )
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"{where}.dtype must be float32, bfloat16 or float16 (got {self.dtype!r})")
        if not self.model:
            raise ConfigError(f"{where}.model is empty; give a model directory, .gguf file or alias")
        if self.timeout_s <= 0:
            raise ConfigError(f"{where}.timeout_s must be > 0 (got {self.timeout_s})")
        if self.max_retries < 0:
            raise ConfigError(f"{where}.max_retries must be >= 0 (got {self.max_retries})")
        self.speculation.validate(f"{where}.speculation")
        self.copy.validate(f"{where}.copy")
        if self.copy.enabled and self.backend not in COPY_BACKENDS:
            raise ConfigError(
                f"{where}.copy needs an in-process engine ({', '.join(COPY_BACKENDS)}); "
                f"backend {self.backend!r} picks its tokens elsewhere: set {where}.copy=false"
            )
        if self.replicas < 0:
            raise ConfigError(f"{where}.replicas must be >= 0 (got {self.replicas}); 0 runs in this process")
        if self.max_batch_rows < 1:
            raise ConfigError(f"{where}.max_batch_rows must be >= 1 (got {self.max_batch_rows})")
        for key in ("prefix_cache_rows", "prefix_cache_tokens"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key} must be >= 0 (got {getattr(self, key)}); 0 keeps no prefix cache")


@dataclass
class VerifierConfig:
    """Which verifier judges (draft step, target step) pairs. ``--set verifier=NAME`` picks one."""

    _primary: ClassVar[str] = "name"

    name: str = "exact"  # verifier registry name: exact, normalized, numeric, embedding, llm_judge, score, cascade
    options: dict[str, Any] = field(default_factory=dict)  # verifier-specific settings

    def validate(self) -> None:
        if self.name not in VERIFIER_NAMES:
            raise ConfigError(
                f"verifier {self.name!r} is unknown; choose one of {', '.join(VERIFIER_NAMES)}"
            )


@dataclass
class LookaheadConfig:
    """Everything `LookaheadReasoner` needs. Vocabulary: see `lookahead.types`."""

    mode: str = "lr"  # "ar", "lr", "sd" or "lr+sd" (see MODES)
    gamma: int = 2  # lookahead depth γ: draft steps proposed per round (steps)
    step_delimiter: str = "\n\n"  # a step ends right after this string
    max_step_tokens: int = 128  # per-step token cap (tokens); a capped target step is never matched
    max_total_tokens: int = 512  # token budget of the whole completion (target tokens)
    stop_at_final_answer: bool = True  # stop after the first committed step that states an answer
    final_answer_pattern: str = r"\\boxed\{[^{}]*\}|[Ff]inal [Aa]nswer(?: is)?:?\s*\$?-?\d"  # regex
    system_prompt: str | None = None  # system message; None = the model's own default
    prompt_template: str = (
        "{question}\n\nSolve the problem step by step. Separate the steps with a blank line. "
        "End with: The final answer is \\boxed{{N}}."
    )  # user message; {question} is replaced by the question
    target: EngineConfig = field(default_factory=EngineConfig)  # the large model
    draft: EngineConfig = field(default_factory=EngineConfig)  # the small model
    target_sampling: SamplingParams = field(default_factory=SamplingParams)
    draft_sampling: SamplingParams = field(default_factory=SamplingParams)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    concurrency: int = 1  # problems in flight at once (batch runs: eval, server); > 1 needs a pool
    ray_address: str | None = None  # None = start Ray locally; "auto" or "ray://host:port" joins a cluster
    call_timeout_s: float = 600.0  # pool: seconds before one engine call counts as hung and is retried
    call_retries: int = 2  # pool: retries of a failed or hung engine call before the problem fails
    adaptive_gamma: bool = False  # choose γ per round in 0..gamma (gamma is then the maximum); lookahead.adaptive
    adaptive_prior_acceptance: float = 0.5  # adaptive_gamma: prior mean of the depth-1 acceptance (probability)
    adaptive_probe_budget: float = 0.02  # adaptive_gamma: share of ar time spent probing while γ = 0 (fraction)
    pipeline: bool = False  # overlap draft, target and verifier within a round (lookahead.rounds.pipelined); off = one batched target call per round
    width: int = 1  # draft steps sampled per node of the round's tree (lookahead.rounds.tree); 1 = a chain

    def validate(self) -> LookaheadConfig:
        """Check every field (and each section's own `validate`); a wrong value raises `ConfigError` naming the fix."""
        self._check_steps_and_prompt()
        self._check_runtime()
        self._check_round_shape()
        self.target.validate("target")
        self.draft.validate("draft")
        self.target_sampling.validate("target_sampling")
        self.draft_sampling.validate("draft_sampling")
        self.verifier.validate()
        return self

    def _check_steps_and_prompt(self) -> None:
        """Mode, depth, step and budget sizes, the prompt template and the final-answer regex."""
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is unknown; choose one of {', '.join(MODES)}")
        if self.gamma < 1:
            raise ConfigError(f"gamma (lookahead depth) must be >= 1 (got {self.gamma}); e.g. --set gamma=2")
        if not self.step_delimiter:
            raise ConfigError("step_delimiter must be a non-empty string, e.g. --set 'step_delimiter=\"\\n\\n\"'")
        if self.max_step_tokens < 1:
            raise ConfigError(f"max_step_tokens must be >= 1 (got {self.max_step_tokens})")
        if self.max_total_tokens < 1:
            raise ConfigError(f"max_total_tokens must be >= 1 (got {self.max_total_tokens})")
        if "{question}" not in self.prompt_template:
            raise ConfigError("prompt_template must contain {question}")
        try:
            self.prompt_template.format(question="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"prompt_template is not a valid format string ({exc}); write {{{{ for a literal brace") from None
        try:
            re.compile(self.final_answer_pattern)
        except re.error as exc:
            raise ConfigError(f"final_answer_pattern is not a valid regex: {exc}") from None

    def _check_runtime(self) -> None:
        """Copying, concurrency and retries, the adaptive policy's settings."""
        if self.target.copy.enabled:
            raise ConfigError(
                "target.copy would change the target's own output (the reference every step is checked "
                "against); copying is for the draft: --set target.copy=false --set draft.copy=true"
            )
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1 (got {self.concurrency})")
        if self.call_timeout_s <= 0:
            raise ConfigError(f"call_timeout_s must be > 0 (got {self.call_timeout_s})")
        if self.call_retries < 0:
            raise ConfigError(f"call_retries must be >= 0 (got {self.call_retries})")
        if not 0.0 < self.adaptive_prior_acceptance < 1.0:
            raise ConfigError(
                f"adaptive_prior_acceptance must be in (0, 1) (got {self.adaptive_prior_acceptance}); "
                "e.g. --set adaptive_prior_acceptance=0.5"
            )
        if not 0.0 < self.adaptive_probe_budget <= 0.05:
            raise ConfigError(
                f"adaptive_probe_budget must be in (0, 0.05] (got {self.adaptive_probe_budget}); probes are for "
                "noticing acceptance rising and should cost little: e.g. --set adaptive_probe_budget=0.02"
            )

    def _check_round_shape(self) -> None:
        """Which round kinds combine: pipelined, tree (width > 1) and adaptive rounds."""
        if self.pipeline and self.adaptive_gamma:
            # The policy learns a sequential round's costs (drafts, then one batched target call,
            # then the verifier); a pipelined round's times overlap and would mislead it.
            raise ConfigError(
                "pipeline and adaptive_gamma cannot be combined: adaptive γ models sequential rounds; "
                "drop one of them: --set pipeline=false or --set adaptive_gamma=false"
            )
        if self.width < 1:
            raise ConfigError(f"width (draft steps per node) must be >= 1 (got {self.width}); e.g. --set width=2")
        if self.width > 1:
            if self.pipeline or self.adaptive_gamma:
                raise ConfigError(
                    "width > 1 runs sequential tree rounds; drop pipeline / adaptive_gamma "
                    "(--set pipeline=false --set adaptive_gamma=false) or use width=1"
                )
            if self.draft_sampling.temperature <= 0:
                raise ConfigError(
                    f"width={self.width} samples several draft steps per node, but draft_sampling.temperature is "
                    f"{self.draft_sampling.temperature}: greedy drafts are all the same step; "
                    "e.g. --set draft_sampling.temperature=0.7"
                )
            nodes = sum(self.width**depth for depth in range(1, self.gamma + 1))
            if nodes > MAX_TREE_DRAFTS:
                raise ConfigError(
                    f"width={self.width} and gamma={self.gamma} make a tree of {nodes} draft steps per round "
                    f"(width + width^2 + ... + width^gamma); at most {MAX_TREE_DRAFTS}: lower width or gamma"
                )

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data, secrets included: for building engines, never for output."""
        return dataclasses.asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """`to_dict` with secrets replaced by ``REDACTED``: what any file, log or printout shows."""
        return redacted(self.to_dict())


REDACTED = "***"  # what a secret reads as in every file, log and printout
# A key whose name says it holds a credential (api_key, token, secret, password, ...).
# "tokens" (a count: max_new_tokens, prefix_cache_tokens) and "tokenizer" are not credentials.
_SECRET_KEY = re.compile(r"(api[_-]?key|token(?!s|iz)|secret|password|passwd|credential|authorization|bearer)", re.IGNORECASE)
_NOT_SECRET = ("max_tokens", "num_tokens", "max_step_tokens", "max_total_tokens", "tokenizer")


def is_secret_key(key: str) -> bool:
    """True for a config or options key that names a credential (``api_key``, ``hf_token``, ...)."""
    name = str(key)
    if any(part in name.lower() for part in _NOT_SECRET):
        return False
    return bool(_SECRET_KEY.search(name))


def shown(key: str, value: Any) -> Any:
    """``value`` as an error message may show it: `REDACTED` when ``key`` names a credential."""
    return REDACTED if is_secret_key(str(key).rsplit(".", 1)[-1]) and value not in (None, "") else value


# ``key=`` / ``key:`` inside a command line, a run label (``lr[target.api_key=...]``) or a YAML
# flow mapping (``{hf_token: ...}``); the value after it runs to a space, comma, ] or } (or a quote).
_ASSIGNMENT = re.compile(r"([A-Za-z_][\w.-]*)(\s*[=:]\s*)")
_VALUE = re.compile(r""""[^"]*"|'[^']*'|[^\s,\]}'"]*""")


def redact_text(text: str) -> str:
    """``text`` (a command line, a run label) with the value of every secret ``key=value`` set to `REDACTED`.

    Example:
        >>> redact_text("lookahead eval --modes 'lr[target.api_key=sk-1,gamma=2]'")
        "lookahead eval --modes 'lr[target.api_key=***,gamma=2]'"
    """
    out, pos = [], 0
    for match in _ASSIGNMENT.finditer(text):
        if match.start() < pos or not is_secret_key(match.group(1).rsplit(".", 1)[-1]):
            continue
        value = _VALUE.match(text, match.end())
        end = value.end() if value else match.end()
        if end == match.end():
            continue  # nothing after the separator: no secret to hide
        out += [text[pos : match.end()], REDACTED]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redacted(data: Any) -> Any:
    """A copy of ``data`` (dicts, lists, scalars) with every secret value set to `REDACTED`.

    A value is secret when its key names a credential (`is_secret_key`); ``None`` and empty
    values stay as they are, so a reader still sees that no key was set.
    """
    if isinstance(data, dict):
        return {
            k: (REDACTED if is_secret_key(k) and v not in (None, "") and not isinstance(v, (dict, list)) else redacted(v))
            for k, v in data.items()
        }
    if isinstance(data, (list, tuple)):
        return [redacted(v) for v in data]
    return data


# --------------------------------------------------------------------------------------------
# Loading: YAML presets, dict -> dataclass, dotted overrides


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read_yaml(source: str | Path) -> dict[str, Any]:
    path = Path(source)
    if not path.suffix and not path.exists():
        path = PRESETS_DIR / f"{source}.yaml"
        if not path.exists():
            raise ConfigError(
                f"config {source!r} is neither a file nor a preset; presets: {', '.join(preset_names())}"
            )
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(path, exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """One line ``FILE:LINE:COL: problem`` (1-based) for a YAML syntax error."""
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    if mark is None:
        return f"{path}: not valid YAML: {problem}"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: {problem} (not valid YAML)"


def _check_finite(value: Any, key: str) -> None:
    """Refuse NaN and infinities (YAML ``.nan``, ``.inf``) anywhere in ``value``, naming the key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number (got {value}); NaN and infinity are not allowed")
    if isinstance(value, dict):
        for sub_key, sub_value in value.items():
            _check_finite(sub_value, f"{key}.{sub_key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{key}[{i}]")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the declared field type, or raise a ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return dataclass_from_dict(tp, value, key)
        primary = getattr(tp, "_primary", None)
        if primary is not None and isinstance(value, (str, bool, int, float)):
            return dataclass_from_dict(tp, {primary: value}, key)
        raise ConfigError(f"{key} must be a mapping (got {value!r})")
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping (got {value!r})")
        _check_finite(value, key)
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false (got {value!r})")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be an integer (got {shown(key, value)!r})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number (got {shown(key, value)!r})")
        _check_finite(float(value), key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{key} must be a string (got {shown(key, value)!r})")
        return value
    return value


def dataclass_from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """``cls`` (a config dataclass) from plain data, each value coerced to its field's type; ``where`` prefixes errors."""
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; known keys here: {', '.join(names)}")
        _check_finite(value, full)
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _set_dotted(cfg: Any, key: str, value: Any) -> None:
    _check_finite(value, key)
    obj = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(obj)]
        where = ".".join(parts[: i + 1])
        if part not in names:
            prefix = ".".join(parts[:i])
            known = ", ".join(f"{prefix}.{n}" if prefix else n for n in names)
            raise ConfigError(f"unknown config key {where!r}; known keys: {known}")
        if i == len(parts) - 1:
            hint = _field_types(type(obj))[part]
            current = getattr(obj, part)
            if dataclasses.is_dataclass(current) and isinstance(value, dict):
                for sub_key, sub_value in value.items():
                    _set_dotted(current, sub_key, sub_value)
            elif (
                dataclasses.is_dataclass(current)
                and isinstance(value, (str, bool, int, float))
                and getattr(current, "_primary", None)
            ):
                if isinstance(current, VerifierConfig) and value != current.name:
                    current.options = {}  # another verifier: the previous one's options do not apply
                primary = current._primary
                setattr(current, primary, _coerce(value, _field_types(type(current))[primary], f"{where}.{primary}"))
            else:
                setattr(obj, part, _coerce(value, hint, where))
        else:
            nxt = getattr(obj, part)
            if isinstance(nxt, dict):  # free-form options: the rest of the key is a path inside the dict
                target = nxt
                for sub in parts[i + 1 : -1]:
                    target = target.setdefault(sub, {})
                    if not isinstance(target, dict):
                        raise ConfigError(f"config key {key!r}: {sub!r} is not a mapping")
                target[parts[-1]] = value
                return
            obj = nxt
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"config key {where!r} has no sub-keys")


def parse_override(item: str) -> tuple[str, Any]:
    """``"gamma=3"`` -> ``("gamma", 3)``; the value is parsed as a YAML scalar."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. --set gamma=3")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    _check_finite(value, key)
    return key, value


def _apply_shorthands(data: dict[str, Any]) -> dict[str, Any]:
    """Move top-level sampling shorthands into both sides, unless a side sets the key itself."""
    data = dict(data)
    for key in SAMPLING_SHORTHANDS:
        if key in data:
            value = data.pop(key)
            for side in ("draft_sampling", "target_sampling"):
                section = dict(data.get(side) or {})
                section.setdefault(key, value)
                data[side] = section
    return data


def _apply_overrides(cfg: LookaheadConfig, pairs: list[tuple[str, Any]]) -> LookaheadConfig:
    # Shorthands first, then whole sections (``verifier=NAME``), then dotted keys, so that nested
    # keys override them whatever the order they came in.
    def rank(pair: tuple[str, Any]) -> int:
        return 0 if pair[0] in SAMPLING_SHORTHANDS else 1 if "." not in pair[0] else 2

    for key, value in sorted(pairs, key=rank):
        if key in SAMPLING_SHORTHANDS:
            _set_dotted(cfg, f"draft_sampling.{key}", value)
            _set_dotted(cfg, f"target_sampling.{key}", value)
        else:
            _set_dotted(cfg, key, value)
    keys = {key for key, _ in pairs}
    if (cfg.pipeline and "pipeline" in keys or cfg.width > 1 and "width" in keys) and "adaptive_gamma" not in keys:
        # asking for pipelined or tree rounds is asking for fixed-γ rounds: that request wins over
        # the preset's adaptive γ (which models sequential chain rounds only)
        cfg.adaptive_gamma = False
    return cfg.validate()


def load_config(
    source: str | Path | None = "default", overrides: typing.Iterable[str] = ()
) -> LookaheadConfig:
    """Build a validated `LookaheadConfig` from a preset name or YAML path plus ``key=value`` items."""
    data = _read_yaml(source) if source is not None else {}
    cfg = dataclass_from_dict(LookaheadConfig, _apply_shorthands(data))
    return _apply_overrides(cfg, [parse_override(item) for item in overrides])


REQUEST_KEYS_FIXED = ("target", "draft")
"""Config sections a single request cannot change (they name loaded models)."""


def with_overrides(cfg: LookaheadConfig, overrides: dict[str, Any]) -> LookaheadConfig:
    """A validated copy of ``cfg`` with per-request overrides (same keys as ``--set``)."""
    if not overrides:
        return cfg
    for key in overrides:
        if key.split(".")[0] in REQUEST_KEYS_FIXED:
            raise ConfigError(f"{key!r} names a loaded model and cannot change per request; build another reasoner")
    return _apply_overrides(copy.deepcopy(cfg), list(overrides.items()))


def config_from_dict(data: dict[str, Any]) -> LookaheadConfig:
    """Build a validated config from a plain dict (same keys as the YAML files)."""
    return dataclass_from_dict(LookaheadConfig, _apply_shorthands(data)).validate()


def configured(cfg: LookaheadConfig, overrides: dict[str, Any]) -> LookaheadConfig:
    """A validated copy of ``cfg`` with any overrides, engine sections included (as ``--set``).

    For building another reasoner (`with_overrides` is the per-request variant and refuses keys
    under ``target``/``draft``).
    """
    return _apply_overrides(copy.deepcopy(cfg), list(overrides.items()))
