"""Peer baselines: what a user would run instead of Lookahead Reasoning, measured like our runs.

`lookahead eval --modes 'ar,lr,peer:hf-assisted,peer:hf-prompt-lookup[prompt_lookup_num_tokens=5]'`
puts these next to our modes on the same problems. A **peer** is an outside decoder:

- ``hf-ar``: the target in plain transformers ``model.generate`` (a sanity peer: how far is our
  engine's ``ar`` from transformers' own loop);
- ``hf-assisted``: transformers assisted generation, ``generate(..., assistant_model=draft)``
  with the config's draft model (token-level speculation with a small model, batch 1);
- ``hf-prompt-lookup``: transformers prompt lookup, ``generate(..., prompt_lookup_num_tokens=N)``
  (option ``prompt_lookup_num_tokens``, default 10);
- ``llamacpp``: llama-cpp-python, autoregressive, on the target's GGUF file (the embedded
  SmolLM2 one by default; the optional extra ``pip install 'lookahead[llamacpp]'``);
- ``llamacpp-lookup``: the same with llama-cpp-python's prompt lookup decoding
  (``llama_cpp.llama_speculative.LlamaPromptLookupDecoding``, option ``num_pred_tokens``).

Fairness (what makes a peer's row comparable with ours): the same prompt (the target's chat
template over `lookahead.prompts.build_messages` of the config's ``prompt_template`` and
``system_prompt``), the same token budget (``max_total_tokens``, capped by the context left as in
the loop), the same sampling (``target_sampling``; greedy by default) and **the same stop rule**
as `LookaheadReasoner`: stop at end of sequence, at the budget, or after the first complete step
(text ending with ``step_delimiter``) that matches ``final_answer_pattern`` when
``stop_at_final_answer`` is on (`StepStopRule`; a transformers ``StoppingCriteria``, a check in
llama.cpp's streaming loop). The completion is cut right after that step, as the loop commits it.
Models are loaded once per peer (`PeerSet` caches them for an evaluation; transformers weights are
shared with the reasoner's engines) and only the generation is timed.

What is not the same, by construction: transformers and llama.cpp decode one continuous token
stream while our loop writes step by step, re-tokenizing the text so far for every call. Our
engine tokenizes a prompt that ends in whitespace as if text followed
(`lookahead.engines.hf.encode_continuations`: SmolLM2 writes "\n\n" as two tokens but a text
ending in "\n\n" tokenizes it as one), so the loop feeds the model what it wrote; a tokenizer whose
re-tokenization still differs would make the texts part there. Also, our loop ends a step at
``max_step_tokens`` as well (and checks the final-answer pattern on that piece); a peer's steps
end at the delimiter only. llama.cpp runs the quantized GGUF weights, our engines their float
conversion.

Records: a peer returns a `lookahead.types.Result` (mode ``peer:NAME``), so the harness records it
like any run. Its trace has one target step per step of the text (``rounds`` = steps, as in
``ar``); ``stats`` follows `RoundStats.summary` with zeros where a term does not apply. Token
acceptance (``spec_*``, see `lookahead.stats`) is counted for the transformers peers from the
target's forward passes (every pass is a verification pass committing its accepted tokens + 1;
the first pass also carries the prefill); llama.cpp does not expose it (None). ``draft_s`` is the
time inside the assistant model's forward passes (hf-assisted), ``target_s`` the rest of the
generation, ``other_s`` 0.

Example:
    >>> cfg = load_config("default")                                         # doctest: +SKIP
    >>> with PeerSet(cfg) as peers:                                          # doctest: +SKIP
    ...     result = peers.get("hf-prompt-lookup", {"prompt_lookup_num_tokens": 5}).generate(
    ...         "Natalia sold 48 clips in April ...")
    >>> result.mode, result.finish_reason, result.stats["token_acceptance_length"]  # doctest: +SKIP
    ('peer:hf-prompt-lookup', 'answer', 1.8)
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lookahead.answers import extract_answer
from lookahead.config import EngineConfig, LookaheadConfig, SamplingParams, configured
from lookahead.engines.torch_thread import torch_thread
from lookahead.errors import ConfigError, ModelLoadError, PeerError, PromptError
from lookahead.prompts import build_messages
from lookahead.stats import RoundStats
from lookahead.steps import split_steps
from lookahead.types import Result, StepRecord

if TYPE_CHECKING:
    from typing_extensions import Self

    from lookahead.engines.base import Engine
    from lookahead.engines.hf import HFEngine

PEER_PREFIX = "peer:"  # run specs and record modes name a peer as "peer:NAME"
LLAMACPP_HINT = "pip install 'lookahead[llamacpp]'"
"""How to install the optional llama.cpp peers."""
WARMUP_TOKENS = 32  # tokens of the untimed warm-up generation of a peer (tokens)


# -- the peers and their options ----------------------------------------------------------------
@dataclass(frozen=True)
class PeerOption:
    """One ``peer:NAME[key=value]`` option."""

    kind: type  # int, float or str
    default: Any  # None = the library's own default
    help: str  # one line: what it sets, with its unit
    minimum: float | None = None  # smallest allowed value (numbers only)
    maximum: float | None = None  # largest allowed value (numbers only)


@dataclass(frozen=True)
class PeerInfo:
    """A peer: what it runs and the options a run spec may give it."""

    name: str  # the NAME in "peer:NAME"
    help: str  # one line for error messages and docs
    options: dict[str, PeerOption] = field(default_factory=dict)  # option name -> spec
    llama_cpp: bool = False  # needs the optional llama-cpp-python package


_LLAMA_OPTIONS = {
    "gguf": PeerOption(str, None, "GGUF file to run (default: the target's own .gguf, or the embedded SmolLM2 one)"),
    "n_threads": PeerOption(int, None, "CPU threads (default: torch's thread count, as our engines use)", 1),
    "n_ctx": PeerOption(int, None, "context window in tokens (default: the target's context length)", 1),
}

PEERS: dict[str, PeerInfo] = {
    "hf-ar": PeerInfo("hf-ar", "the target in plain transformers generate"),
    "hf-assisted": PeerInfo(
        "hf-assisted",
        "transformers assisted generation with the config's draft model (assistant_model)",
        {
            "num_assistant_tokens": PeerOption(
                int, None, "tokens the assistant proposes per pass (default: transformers', 20)", 1
            ),
            "assistant_confidence_threshold": PeerOption(
                float, None, "stop proposing below this assistant probability (default: transformers', 0.4)", 0.0, 1.0
            ),
        },
    ),
    "hf-prompt-lookup": PeerInfo(
        "hf-prompt-lookup",
        "transformers prompt lookup decoding (prompt_lookup_num_tokens)",
        {
            "prompt_lookup_num_tokens": PeerOption(int, 10, "tokens proposed per pass (tokens)", 1),
            "max_matching_ngram_size": PeerOption(
                int, None, "longest n-gram looked up (default: transformers', 2) (tokens)", 1
            ),
        },
    ),
    "llamacpp": PeerInfo(
        "llamacpp", "llama-cpp-python on the target's GGUF file", dict(_LLAMA_OPTIONS), llama_cpp=True
    ),
    "llamacpp-lookup": PeerInfo(
        "llamacpp-lookup",
        "llama-cpp-python with prompt lookup decoding (LlamaPromptLookupDecoding)",
        {
            **_LLAMA_OPTIONS,
            "num_pred_tokens": PeerOption(int, 10, "tokens proposed per pass (tokens)", 1),
            "max_ngram_size": PeerOption(int, 2, "longest n-gram looked up (tokens)", 1),
        },
        llama_cpp=True,
    ),
}


def peer_names() -> list[str]:
    return list(PEERS)


def peer_name(mode: str) -> str | None:
    """``"peer:hf-ar"`` -> ``"hf-ar"``; None for our own modes."""
    return mode[len(PEER_PREFIX) :] if mode.startswith(PEER_PREFIX) else None


def _info(name: str, where: str) -> PeerInfo:
    if name not in PEERS:
        known = ", ".join(PEER_PREFIX + p for p in PEERS)
        raise ConfigError(f"{where}: peer {name!r} is unknown; choose one of {known}")
    return PEERS[name]


def split_overrides(name: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A peer run's ``[key=value]`` items -> (its peer options, config overrides such as max_total_tokens)."""
    options = PEERS[name].options if name in PEERS else {}
    return (
        {k: v for k, v in overrides.items() if k in options},
        {k: v for k, v in overrides.items() if k not in options},
    )


def _checked_options(info: PeerInfo, given: dict[str, Any], where: str) -> dict[str, Any]:
    """The options with defaults filled in, each checked for type and range."""
    out = {}
    for key, spec in info.options.items():
        value = given.get(key, spec.default)
        if value is not None and key in given:
            if spec.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{where}: {key} must be an integer (got {value!r}); e.g. {key}=5")
            if spec.kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{where}: {key} must be a number (got {value!r})")
            if spec.kind is str:
                value = str(value)
            if spec.minimum is not None and value < spec.minimum:
                raise ConfigError(f"{where}: {key} must be >= {spec.minimum:g} (got {value!r}); {spec.help}")
            if spec.maximum is not None and value > spec.maximum:
                raise ConfigError(f"{where}: {key} must be <= {spec.maximum:g} (got {value!r}); {spec.help}")
        out[key] = value
    return out


def check_peer_run(name: str, overrides: dict[str, Any], config: LookaheadConfig, where: str) -> None:
    """Validate a ``peer:NAME[...]`` run now (before any model loads); ConfigError naming ``where``."""
    info = _info(name, where)
    options, config_overrides = split_overrides(name, overrides)
    _checked_options(info, options, where)
    try:
        configured(config, config_overrides)
    except ConfigError as exc:
        known = ", ".join(info.options) or "none"
        raise ConfigError(f"{where}: {exc} (options of peer:{name}: {known})") from None
    if info.llama_cpp:
        import_llama_cpp()


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or a ConfigError saying how to install it."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError:
        raise ConfigError(
            f"the llama.cpp peers need llama-cpp-python, which is not installed: {LLAMACPP_HINT} "
            "(it compiles llama.cpp: a few minutes of CPU)"
        ) from None


# -- the stop rule ------------------------------------------------------------------------------
class StepStopRule:
    """`LookaheadReasoner`'s final-answer stop, on a growing completion text.

    Feed it the whole completion so far (`update`); it looks at each newly completed step (text up
    to and including the first delimiter after the previous step) and fires on the first one that
    matches the final-answer pattern. ``cut`` is then the end of that step: the completion to keep.
    End of sequence and the token budget are the decoder's own limits.

    Example:
        >>> rule = StepStopRule("\\n\\n", re.compile(r"answer is \\d"))
        >>> rule.update("Add them.\\n\\nThe answer is 7")   # the step is not complete yet
        False
        >>> rule.update("Add them.\\n\\nThe answer is 7.\\n\\nBye"), rule.cut
        (True, 29)
    """

    def __init__(self, delimiter: str, pattern: re.Pattern[str] | None) -> None:
        self.delimiter = delimiter  # the step delimiter
        self.pattern = pattern  # the final-answer pattern; None = never fire
        self.step_start = 0  # where the current (incomplete) step begins in the text (chars)
        self.cut: int | None = None  # end of the step that fired (chars), once it has

    def update(self, text: str) -> bool:
        """True once a complete step of ``text`` states the final answer."""
        while self.cut is None:
            at = text.find(self.delimiter, self.step_start)
            if at < 0:
                return False
            end = at + len(self.delimiter)
            step = text[self.step_start : end]
            self.step_start = end
            if self.pattern is not None and self.pattern.search(step):
                self.cut = end
        return True

    def trailing_step_answers(self, text: str) -> bool:
        """Does the incomplete last step state the answer? (The loop checks it before the budget.)"""
        return self.pattern is not None and bool(self.pattern.search(text[self.step_start :]))


def _stop_rule(cfg: LookaheadConfig) -> StepStopRule:
    pattern = re.compile(cfg.final_answer_pattern) if cfg.stop_at_final_answer else None
    return StepStopRule(cfg.step_delimiter, pattern)


def _finish(rule: StepStopRule, text: str, ended: str) -> tuple[str, str]:
    """The kept text and the finish reason, with the loop's order: eos, answer, length."""
    rule.update(text)
    if rule.cut is not None:
        return text[: rule.cut], "answer"
    if ended == "length" and rule.trailing_step_answers(text):
        return text, "answer"
    return text, ended


# -- shared pieces ------------------------------------------------------------------------------
@dataclass
class _Prepared:
    """One question, rendered for the target like `LookaheadReasoner.start` does."""

    prompt: str  # the chat-formatted prompt (target template)
    prompt_tokens: int  # its tokens (target tokenizer)
    token_limit: int  # completion budget: min(max_total_tokens, context left) (tokens)


def _prepare(cfg: LookaheadConfig, engine: Engine, question: str) -> _Prepared:
    messages = build_messages(question, cfg.prompt_template, cfg.system_prompt)
    prompt = engine.format_chat(messages)
    prompt_tokens = engine.count_tokens(prompt)
    limit = cfg.max_total_tokens
    context = engine.context_length()
    if context is not None:
        if prompt_tokens >= context:
            raise PromptError(
                f"the prompt has {prompt_tokens} tokens but the target's context holds {context}; shorten the question"
            )
        limit = min(limit, context - prompt_tokens)
    return _Prepared(prompt, prompt_tokens, limit)


def _hf_engine(cfg: EngineConfig, where: str, peer: str) -> HFEngine:
    """The in-process transformers model of ``cfg`` (weights shared with any engine holding them)."""
    if cfg.backend != "hf":
        raise ConfigError(
            f"peer:{peer} runs transformers in this process, but {where}.backend is {cfg.backend!r}; "
            f"set {where}.backend=hf (and {where}.model to a local model) for this run"
        )
    from lookahead.engines.hf import HFEngine

    return HFEngine.from_config(dataclasses.replace(cfg, pad_batches=False))


def _result(
    name: str,
    cfg: LookaheadConfig,
    engine: Engine,
    prepared: _Prepared,
    text: str,
    finish_reason: str,
    wall_time_s: float,
    draft_s: float = 0.0,
    spec: dict[str, int] | None = None,
) -> Result:
    """A `Result` like `LookaheadReasoner.result` builds one for ``ar`` (one target step per step)."""
    stats = RoundStats()
    steps: list[StepRecord] = []
    done = ""
    tokens = 0
    seconds = wall_time_s / max(len(split_steps(text, cfg.step_delimiter)), 1) if text else 0.0
    for index, step_text in enumerate(split_steps(text, cfg.step_delimiter) if text else []):
        done += step_text
        before, tokens = tokens, engine.count_tokens(done)
        steps.append(
            StepRecord(index=index, round=index, depth=1, text=step_text, source="target",
                       tokens=tokens - before, target_text=step_text, seconds=seconds)
        )
        stats.observe_round(drafted=0, matched=[], accepted=0, committed=1)
    stats.draft_s = draft_s
    stats.target_s = max(wall_time_s - draft_s, 0.0)
    if spec is not None:
        stats.target_tokens.spec_draft_tokens = spec["proposed"]
        stats.target_tokens.spec_accepted_tokens = spec["accepted"]
        stats.target_tokens.spec_verify_passes = spec["passes"]
    summary = stats.summary()
    summary["other_s"] = 0.0  # the whole generation is the peer's own call
    summary["peer"] = name
    if spec is None:  # the peer does not expose its token acceptance
        for key in ("spec_draft_tokens", "spec_accepted_tokens", "spec_verify_passes",
                    "token_acceptance_rate", "token_acceptance_length"):  # fmt: skip
            summary[key] = None
    return Result(
        text=text,
        mode=PEER_PREFIX + name,
        steps=steps,
        prompt_tokens=prepared.prompt_tokens,
        completion_tokens=tokens,
        finish_reason=finish_reason,
        wall_time_s=wall_time_s,
        rounds=len(steps),
        stats=summary,
        answer=extract_answer(text),
    )


class Peer(Protocol):
    """A loaded peer: `generate` one question at a time, `close` to free its models."""

    name: str  # the NAME of "peer:NAME"
    config: LookaheadConfig  # the effective config (the evaluation's, plus the run's config keys)
    options: dict[str, Any]  # the peer options, defaults filled in

    def generate(self, question: str, seed: int | None = None, max_new_tokens: int | None = None) -> Result:
        """Solve one question; ``seed`` seeds sampling (ignored when greedy); ``max_new_tokens``
        caps the budget further (the untimed warm-up)."""
        ...

    def close(self) -> None: ...


# -- transformers -------------------------------------------------------------------------------
class _ForwardMeter:
    """Counts and times a model's forward passes during one ``generate`` (PyTorch module hooks)."""

    def __init__(self, model: Any) -> None:
        self.widths: list[int] = []  # input tokens of each forward pass (tokens)
        self.seconds = 0.0  # time inside the forward passes (seconds)
        self._started = 0.0
        self._handles = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, with_kwargs=True),
        ]

    def _before(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        self.widths.append(int(ids.shape[-1]) if ids is not None else 0)
        self._started = time.perf_counter()

    def _after(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        self.seconds += time.perf_counter() - self._started

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _transformers_stop(tokenizer: Any, prompt_len: int, rule: StepStopRule) -> Any:
    """A transformers ``StoppingCriteria`` applying ``rule`` to the generated text.

    Each call decodes only a short tail (the new tokens plus a few before them, where a delimiter
    may start); the whole completion is decoded only when the delimiter shows up there.
    """
    import torch
    from transformers import StoppingCriteria

    window = max(8, len(rule.delimiter))  # earlier tokens decoded with the new ones (tokens)

    class StepStop(StoppingCriteria):
        def __init__(self) -> None:
            self.seen = prompt_len  # sequence length at the previous call (tokens)

        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            start = max(prompt_len, self.seen - window)
            self.seen = int(input_ids.shape[1])
            tail = tokenizer.decode(input_ids[0, start:].tolist(), **_DECODE_KW)
            done = False
            if rule.delimiter in tail:
                done = rule.update(tokenizer.decode(input_ids[0, prompt_len:].tolist(), **_DECODE_KW))
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return StepStop()


_DECODE_KW = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}  # as HFEngine decodes


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-sequence ids as `HFEngine` collects them (tokenizer's and generation config's)."""
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return sorted(ids)


def _sampling_kwargs(params: SamplingParams, seed: int | None) -> dict[str, Any]:
    if params.temperature == 0:
        return {"do_sample": False}
    import torch

    chosen = seed if seed is not None else params.seed
    if chosen is not None:
        torch.manual_seed(int(chosen))
    return {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}


class TransformersPeer:
    """``hf-ar``, ``hf-assisted`` and ``hf-prompt-lookup``: transformers ``generate`` on the target."""

    def __init__(self, name: str, config: LookaheadConfig, options: dict[str, Any]) -> None:
        self.name = name
        self.config = config
        self.options = options
        self.target: HFEngine | None = _hf_engine(config.target, "target", name)
        self.draft: HFEngine | None = None
        self._same_vocab = True  # does the assistant share the target's tokenizer?
        if name == "hf-assisted":
            try:
                self.draft = _hf_engine(config.draft, "draft", name)
            except BaseException:
                self.target.shutdown()
                raise
            if self.draft.model is self.target.model:
                self.close()
                raise ConfigError(
                    "peer:hf-assisted: draft.model names the target's own model; assisted generation needs "
                    "a smaller draft sharing its tokenizer: set draft.model (e.g. peer:hf-assisted[draft.model=PATH])"
                )
            if self.draft.device != self.target.device:
                self.close()
                raise ConfigError(
                    f"peer:hf-assisted needs the draft on the target's device ({self.target.device}); "
                    f"set draft.device={self.target.device}"
                )
            self._same_vocab = self.draft.tokenizer.get_vocab() == self.target.tokenizer.get_vocab()

    def _generate_kwargs(self, ids: Any, eos: list[int], budget: int, seed: int | None, rule: StepStopRule) -> dict[str, Any]:
        """``model.generate``'s arguments: the prompt, the budget, the sampling, the step stop rule
        and this peer's own options (prompt lookup)."""
        import torch

        tokenizer = self.target.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": budget,
            "eos_token_id": eos or None,
            "pad_token_id": pad,
            **_sampling_kwargs(self.config.target_sampling, seed),
        }
        if rule.pattern is not None:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([_transformers_stop(tokenizer, ids.shape[1], rule)])
        if self.name == "hf-prompt-lookup":
            kwargs["prompt_lookup_num_tokens"] = self.options["prompt_lookup_num_tokens"]
            if self.options["max_matching_ngram_size"] is not None:
                kwargs["max_matching_ngram_size"] = self.options["max_matching_ngram_size"]
        return kwargs

    def _attach_draft(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Assisted generation: the draft model (and both tokenizers when their vocabularies
        differ) into ``kwargs``, this peer's assistant options set on the draft's generation
        config; returns the values to put back afterwards."""
        restore: dict[str, Any] = {}
        kwargs["assistant_model"] = self.draft.model
        if not self._same_vocab:  # universal assisted generation: text passes between tokenizers
            kwargs["tokenizer"], kwargs["assistant_tokenizer"] = self.target.tokenizer, self.draft.tokenizer
        assistant_config = self.draft.model.generation_config
        for key in ("num_assistant_tokens", "assistant_confidence_threshold"):
            if self.options[key] is not None:
                restore[key] = getattr(assistant_config, key, None)
                setattr(assistant_config, key, self.options[key])
        return restore

    def _token_counts(self, generated: list[int], ended: str, widths: list[int], prompt_len: int) -> dict[str, int] | None:
        """Token-level speculation of one generation from the target's forward passes (their
        widths): proposed, accepted, passes (None: no pass was seen)."""
        passes = len(widths)
        if self.name == "hf-ar":
            return {"proposed": 0, "accepted": 0, "passes": 0}  # no speculation, as our ar
        if not passes:
            return None
        committed = len(generated) + (ended == "eos")  # tokens the passes committed, EOS included
        proposed = sum(widths) - prompt_len - (passes - 1)  # beyond the prompt + 1 per pass
        return {"proposed": max(proposed, 0), "accepted": max(committed - passes, 0), "passes": passes}

    @torch_thread
    def generate(self, question: str, seed: int | None = None, max_new_tokens: int | None = None) -> Result:
        """One generation, on the torch thread where our engines run (`lookahead.engines.torch_thread`)."""
        import torch

        if self.target is None:
            raise RuntimeError(f"peer {self.name} was closed")
        cfg, engine = self.config, self.target
        model, tokenizer = engine.model, engine.tokenizer
        prepared = _prepare(cfg, engine, question)
        budget = prepared.token_limit if max_new_tokens is None else min(prepared.token_limit, max_new_tokens)
        ids = torch.tensor([tokenizer(prepared.prompt, add_special_tokens=False).input_ids], device=engine.device)
        eos = _eos_ids(model, tokenizer)
        rule = _stop_rule(cfg)
        kwargs = self._generate_kwargs(ids, eos, budget, seed, rule)
        restore = self._attach_draft(kwargs) if self.draft is not None else {}
        draft_meter = _ForwardMeter(self.draft.model) if self.draft is not None else None
        target_meter = _ForwardMeter(model)
        try:
            start = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**kwargs)
            generated = out[0, ids.shape[1] :].tolist()
            wall = time.perf_counter() - start
        finally:
            target_meter.remove()
            if draft_meter is not None:
                draft_meter.remove()
            for key, value in restore.items():
                setattr(self.draft.model.generation_config, key, value)
        ended = "length"
        if generated and generated[-1] in eos:
            generated, ended = generated[:-1], "eos"
        text, finish = _finish(rule, tokenizer.decode(generated, **_DECODE_KW), ended)
        spec = self._token_counts(generated, ended, target_meter.widths, ids.shape[1])
        draft_s = draft_meter.seconds if draft_meter is not None else 0.0
        return _result(self.name, cfg, engine, prepared, text, finish, wall, draft_s, spec)

    def close(self) -> None:
        for engine in (self.target, self.draft):
            if engine is not None:
                engine.shutdown()
        self.target = self.draft = None


# -- llama.cpp ----------------------------------------------------------------------------------
def _gguf_path(config: LookaheadConfig, options: dict[str, Any], name: str) -> Path:
    """The GGUF file a llama.cpp peer runs: the ``gguf`` option, the target's .gguf, or the embedded one."""
    from lookahead.engines.hf import EMBEDDED_ALIAS, embedded_gguf_path

    if options.get("gguf"):
        path = Path(options["gguf"]).expanduser()
        if not path.is_file():
            raise ConfigError(f"peer:{name}[gguf={options['gguf']}]: the file {path} does not exist")
        return path
    model = config.target.model.strip()
    if model.lower() == EMBEDDED_ALIAS:
        return embedded_gguf_path()
    if model.lower().endswith(".gguf") and Path(model).expanduser().is_file():
        return Path(model).expanduser()
    raise ConfigError(
        f"peer:{name} runs a GGUF file, and target.model {model!r} is not one; "
        f"give it one, e.g. peer:{name}[gguf=/path/model.gguf]"
    )


def _prompt_engine(cfg: EngineConfig, peer: str) -> Engine:
    """The engine that renders a llama.cpp peer's prompt and counts its tokens: the transformers
    target in-process, or the configured server engine (one client, no Ray pool)."""
    if cfg.backend == "hf":
        return _hf_engine(cfg, "target", peer)
    from lookahead.engines import create_engine

    return create_engine(dataclasses.replace(cfg, replicas=0))


class LlamaCppPeer:
    """``llamacpp`` and ``llamacpp-lookup``: llama-cpp-python on a GGUF file, streamed.

    The target engine renders the prompt (same chat template) and counts the completion's tokens,
    as for every other run: the in-process transformers target, or, when ``target.backend`` is a
    server (e.g. lookahead over llama-server), that engine with its local tokenizer, which loads
    no weights here. llama.cpp tokenizes the prompt with its own vocabulary (no BOS added: the
    template carries what the model needs).
    """

    def __init__(self, name: str, config: LookaheadConfig, options: dict[str, Any]) -> None:
        llama_cpp = import_llama_cpp()
        self.name = name
        self.config = config
        self.options = options
        gguf = _gguf_path(config, options, name)
        self.target: Engine | None = _prompt_engine(config.target, name)
        import torch

        draft = None
        if name == "llamacpp-lookup":
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

            draft = LlamaPromptLookupDecoding(
                max_ngram_size=options["max_ngram_size"], num_pred_tokens=options["num_pred_tokens"]
            )
        threads = options["n_threads"] or torch.get_num_threads()
        n_ctx = options["n_ctx"] or self.target.context_length() or 0  # 0: the model's own
        try:
            self.llm: Any = llama_cpp.Llama(
                model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                draft_model=draft, verbose=False,
            )  # fmt: skip
        except (ValueError, RuntimeError, OSError) as exc:
            self.target.shutdown()
            raise ModelLoadError(f"llama.cpp could not load {gguf}: {exc}") from None

    def generate(self, question: str, seed: int | None = None, max_new_tokens: int | None = None) -> Result:
        if self.target is None:
            raise RuntimeError(f"peer {self.name} was closed")
        cfg = self.config
        prepared = _prepare(cfg, self.target, question)
        budget = prepared.token_limit if max_new_tokens is None else min(prepared.token_limit, max_new_tokens)
        ids = self.llm.tokenize(prepared.prompt.encode("utf-8"), add_bos=False, special=True)
        if len(ids) + budget > self.llm.n_ctx():
            raise PromptError(
                f"the prompt ({len(ids)} tokens) and the budget ({budget} tokens) exceed llama.cpp's context of "
                f"{self.llm.n_ctx()} tokens; give peer:{self.name}[n_ctx=N] a larger one"
            )
        params = cfg.target_sampling
        sampling: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
                                    "min_p": 0.0, "repeat_penalty": 1.0}  # fmt: skip
        if params.temperature > 0 and (seed if seed is not None else params.seed) is not None:
            sampling["seed"] = int(seed if seed is not None else params.seed)
        rule = _stop_rule(cfg)
        text, ended = "", "length"
        # no state from the previous problem: llama-cpp-python 0.3.36 reused it after a stream that
        # was closed early (the stop rule) and its prompt-lookup path then overran its score buffer
        # ("could not broadcast input array from shape (540672,) into shape (294912,)")
        self.llm.reset()
        start = time.perf_counter()
        stream = self.llm.create_completion(ids, max_tokens=budget, stop=[], stream=True, **sampling)
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                text += choice["text"]
                if rule.update(text):
                    break
                if choice.get("finish_reason"):
                    ended = "eos" if choice["finish_reason"] == "stop" else "length"  # stop=[]: "stop" is EOS
        except (ValueError, RuntimeError) as exc:  # the library's own failure: this problem's error record
            raise PeerError(f"peer:{self.name}: llama.cpp failed on this problem: {exc}") from None
        finally:
            stream.close()
        wall = time.perf_counter() - start
        text, finish = _finish(rule, text, ended)
        return _result(self.name, cfg, self.target, prepared, text, finish, wall, spec=None)

    def close(self) -> None:
        if self.target is not None:
            self.target.shutdown()
            self.target = None
        llm = getattr(self, "llm", None)
        if llm is not None:
            close = getattr(llm, "close", None)
            if callable(close):
                close()
            self.llm = None


# -- building and caching peers -----------------------------------------------------------------
def create_peer(name: str, config: LookaheadConfig, overrides: dict[str, Any] | None = None) -> Peer:
    """Load peer ``name`` for ``config`` plus a run's ``[key=value]`` items (options and config keys)."""
    where = f"peer:{name}"
    info = _info(name, where)
    options, config_overrides = split_overrides(name, dict(overrides or {}))
    checked = _checked_options(info, options, where)
    effective = configured(config, config_overrides)
    if info.llama_cpp:
        return LlamaCppPeer(name, effective, checked)
    return TransformersPeer(name, effective, checked)


class PeerSet:
    """The peers of one evaluation, each loaded on first use and kept until `close`.

    Example:
        >>> with PeerSet(cfg) as peers:                                 # doctest: +SKIP
        ...     peers.get("hf-ar").generate("What is 2+2?").text
    """

    def __init__(self, config: LookaheadConfig) -> None:
        self.config = config  # the evaluation's config; a run's own config keys go on top
        self._loaded: dict[str, Peer] = {}  # by (name, overrides)

    def get(self, name: str, overrides: dict[str, Any] | None = None) -> Peer:
        key = repr((name, sorted((overrides or {}).items())))
        if key not in self._loaded:
            self._loaded[key] = create_peer(name, self.config, overrides)
        return self._loaded[key]

    def warm_up(self, name: str, overrides: dict[str, Any] | None, question: str) -> None:
        """One short untimed generation, so loading and first-call costs land in no row's time.
        Errors are left to the real jobs."""
        from lookahead.errors import LookaheadError

        try:
            self.get(name, overrides).generate(question, max_new_tokens=WARMUP_TOKENS)
        except LookaheadError:
            pass

    def close(self) -> None:
        for peer in self._loaded.values():
            peer.close()
        self._loaded = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
