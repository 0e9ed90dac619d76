"""THE algorithm: Lookahead Reasoning (arXiv 2506.19830), one round at a time.

One round for one problem, with lookahead depth γ (vocabulary: `lookahead.types`)::

    propose : d_1 = draft(P), d_2 = draft(P + d_1), ..., d_γ            (sequential, cheap)
    expand  : t_i = target(P + d_1 .. d_{i-1}) for i = 1..γ+1           (ONE batched call)
    judge   : verdict_i = verifier(P + d_1 .. d_{i-1}, d_i, t_i)        (one batched call)
    commit  : j = longest run of accepted verdicts (t_i must end on the delimiter);
              P += d_1 .. d_j, then the fallback step t_{j+1} (the bonus step if j = γ)

so every round commits at least one target-quality step. ``ar`` mode is the baseline: the target
alone, one step per round, through the same engine calls and stop rules -- with greedy decoding
and the exact verifier ``lr`` therefore commits exactly the text ``ar`` commits.

How a round proposes is a strategy picked per problem from `lookahead.rounds.ROUNDS`: ``ar``
(γ = 0), ``chain`` (the round above; with ``adaptive_gamma`` the reasoner's `AdaptiveGamma`
policy picks γ in 0..gamma each round), ``tree`` (``width`` > 1: several sampled draft steps per
depth) and ``pipelined`` (``pipeline``: draft, target and verifier overlapped, steps drafted
ahead carried into the next round). Each proposes d_1..d_k, t_1..t_{k+1} and the verdicts as a
`Proposal`; `LookaheadReasoner.commit` is the same for all.

Token-level speculation is a second, independent layer (`uses_token_speculation`): ``sd`` runs
``ar`` rounds with ``speculate=True`` on every target call, ``lr+sd`` runs ``lr`` rounds with
``speculate=True`` on every draft and target call. Engines keep greedy output unchanged when
speculating, so ``sd`` == ``lr+sd`` == ``ar`` under greedy decoding and the exact verifier.

Stop rules, checked after every committed step in order: the step ended with end of sequence
(``eos``), the step states a final answer (``answer``, if configured), the completion reached the
token budget (``length``; counted as the target tokens of the committed text, and never past the
model context).

Example:
    >>> from lookahead import LookaheadReasoner, load_config
    >>> reasoner = LookaheadReasoner.from_config(load_config("default"))   # doctest: +SKIP
    >>> result = reasoner.generate("Natalia sold 48 clips in April ...")  # doctest: +SKIP
    >>> result.text, result.stats["acceptance_rate"]                         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from lookahead.adaptive import AdaptiveGamma
from lookahead.answers import extract_answer
from lookahead.config import (
    MODES,
    EngineConfig,
    LookaheadConfig,
    uses_step_speculation,
    uses_token_speculation,
    with_overrides,
)
from lookahead.engines import create_engine
from lookahead.engines.base import Engine, EngineBase
from lookahead.engines.batching import Batcher, BatchingEngine, batched
from lookahead.errors import ConfigError, GenerationCancelled, PromptError
from lookahead.prompts import Messages, Prompt, build_messages, normalize_messages
from lookahead.rounds import ROUNDS, chain
from lookahead.rounds.pipelined import RoundInFlight
from lookahead.rounds.state import (
    ProblemState,
    Proposal,
    RoundContext,
    accepted_run,
    carry_ahead,
)
from lookahead.types import Completion, Result, StepRecord, Verdict
from lookahead.verifiers import create_verifier
from lookahead.verifiers.base import Verifier

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

__all__ = ["LookaheadReasoner", "ProblemState", "Proposal", "ResultStream", "RoundInFlight", "accepted_run"]

MAX_TARGET_WORKERS = 64  # most threads running target rows of pipelined rounds at once (threads)


def verifier_key(config: LookaheadConfig) -> tuple[str, str]:
    """What makes two verifiers differ: their config and the step delimiter they strip and compare on."""
    return repr(config.verifier), config.step_delimiter


class LookaheadReasoner:
    """Runs ``ar``, ``lr``, ``sd`` or ``lr+sd`` generation over a target engine, a draft engine and
    a verifier.

    Engines are created from the config unless given; the draft is created lazily (``ar`` and
    ``sd`` never load it). Use it as a context manager, or call `close`, to free the engines.

    Concurrency: `generate` from many threads, `agenerate` from many tasks and `generate_batch`
    run their problems at once. An engine that is not thread-safe (an in-process model) is put
    behind the reasoner's `Batcher`, which merges the engine calls of every problem in flight
    into shared batches (`lookahead.engines.batching`); so ``reasoner.target`` and
    ``reasoner.draft`` are always safe to call from many threads.
    """

    def __init__(
        self,
        config: LookaheadConfig,
        target: Engine | None = None,
        draft: Engine | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.config = config.validate()
        self.batcher = Batcher(max_batch_rows=config.target.max_batch_rows)  # merges in-process engine calls
        self._wrapped: dict[int, Engine] = {}  # id(engine) -> the engine as many threads may call it
        self._target = self._batched(target) if target is not None else None
        self._draft = self._batched(draft) if draft is not None else None
        self._verifiers: dict[tuple[str, str], Verifier] = {}  # by `verifier_key`, created on first use
        if verifier is not None:
            self._verifiers[verifier_key(config)] = verifier
        self._policies: dict[tuple[int, str, bool], AdaptiveGamma] = {}  # adaptive γ, by `policy_for` key
        self._policy_lock = threading.Lock()  # scheduler threads may create policies at once
        self._workers: ThreadPoolExecutor | None = None  # pipeline: runs target rows, created on first use
        self._workers_lock = threading.Lock()  # scheduler threads may start pipelined rounds at once

    @classmethod
    def from_config(cls, config: LookaheadConfig) -> LookaheadReasoner:
        reasoner = cls(config)
        engines = [reasoner.target]  # load the target now: errors surface before the first question
        if uses_step_speculation(config.mode):
            engines.append(reasoner.draft)
        if uses_token_speculation(config.mode):
            for engine in engines:  # load the speculation draft model and check its tokenizer now
                engine.prepare_speculation()
        return reasoner

    # -- components, created on first use ----------------------------------------------------
    @property
    def target(self) -> Engine:
        if self._target is None:
            self._target = self._batched(create_engine(self._target_config(), **self._pool_settings()))
        return self._target

    def _batched(self, engine: Engine) -> Engine:
        """``engine`` behind the reasoner's batcher unless it is thread-safe (one wrapper per engine:
        a draft that is the target stays the same object)."""
        if id(engine) not in self._wrapped:
            self._wrapped[id(engine)] = batched(engine, self.batcher)
        return self._wrapped[id(engine)]

    def _target_config(self) -> EngineConfig:
        """``config.target``, with ``speculation.draft_model`` defaulting to the draft's model.

        Token-level speculation with ``method: draft`` needs a small model sharing the target's
        tokenizer; unless ``target.speculation.draft_model`` names one, the step-level draft
        (``draft.model``, when it runs in-process on the same backend) is used. The engine
        checks that the vocabularies agree and raises ConfigError otherwise.
        """
        cfg = self.config
        spec = cfg.target.speculation
        if spec.method == "draft" and spec.draft_model is None and cfg.draft.backend == cfg.target.backend:
            spec = dataclasses.replace(spec, draft_model=cfg.draft.model)
            return dataclasses.replace(cfg.target, speculation=spec)
        return cfg.target

    @property
    def draft(self) -> Engine:
        if self._draft is None:
            self._draft = self._batched(create_engine(self.config.draft, **self._pool_settings()))
        return self._draft

    def _pool_settings(self) -> dict[str, Any]:
        """Settings for engines with ``replicas >= 1`` (Ray actors), from the reasoner's config."""
        cfg = self.config
        return {"ray_address": cfg.ray_address, "call_timeout_s": cfg.call_timeout_s, "call_retries": cfg.call_retries}

    @property
    def verifier(self) -> Verifier:
        """The verifier of the reasoner's own config."""
        return self.verifier_for(self.config)

    def verifier_for(self, config: LookaheadConfig) -> Verifier:
        """The verifier of ``config`` (one per verifier config and step delimiter, created on first use)."""
        key = verifier_key(config)
        if key not in self._verifiers:
            engines = {"target": lambda: self.target, "draft": lambda: self.draft}
            self._verifiers[key] = create_verifier(config.verifier, engines, step_delimiter=config.step_delimiter)
        return self._verifiers[key]

    def policy_for(self, config: LookaheadConfig, mode: str) -> AdaptiveGamma:
        """The adaptive-γ policy of this effective config (shared by every problem that uses it).

        Keyed by the maximum γ, the verifier and whether the engine calls speculate tokens:
        acceptance depends on the verifier, and costs on token-level speculation.
        """
        key = (config.gamma, repr(config.verifier), uses_token_speculation(mode))
        with self._policy_lock:
            policy = self._policies.get(key)
            if policy is None:
                costs = self.target.batch_costs  # seconds by batch size, where the engine measured them
                prior = None
                if isinstance(costs, (list, tuple)) and len(costs) > 2 and 0 < costs[1] < float("inf"):
                    prior = [float(c) / float(costs[1]) for c in costs[1:]]
                policy = AdaptiveGamma(
                    config.gamma, config.adaptive_prior_acceptance, config.adaptive_probe_budget, batch_cost_prior=prior
                )
                self._policies[key] = policy
            return policy

    def _target_workers(self) -> ThreadPoolExecutor:
        """The threads that run the target rows of pipelined rounds (created on first use).

        Used for a target that is thread-safe by itself (`PoolEngine`, a server): one thread per row
        of γ + 1 rows for each problem in flight, so a round's rows, and those of concurrent
        problems, run at once. (An in-process target's rows run on the problem's own thread:
        `_round_context`.)
        """
        with self._workers_lock:
            if self._workers is None:
                workers = min((self.config.gamma + 1) * self.config.concurrency, MAX_TARGET_WORKERS)
                self._workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookahead-target")
            return self._workers

    def cache_usage(self) -> dict[str, dict[str, int]]:
        """What the loaded engines' caches hold now, by role (``target``, ``draft``), next to their bounds."""
        loaded = {"target": self._target, "draft": self._draft}
        usage = {role: e.cache_usage() for role, e in loaded.items() if e is not None}
        return {role: held for role, held in usage.items() if held}

    def clear_prefix_caches(self) -> dict[str, bool]:
        """Clear the loaded engines' prefix caches (`EngineBase.clear_prefix_cache`); by role
        (``target``, ``draft``), whether each one did. An engine not loaded yet is left alone."""
        loaded = {"target": self._target, "draft": self._draft}
        return {role: bool(e.clear_prefix_cache()) for role, e in loaded.items() if e is not None and isinstance(e, EngineBase)}

    def close(self) -> None:
        with self._workers_lock:
            workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown(wait=True, cancel_futures=True)
        for engine in {id(e): e for e in (self._target, self._draft) if e is not None}.values():
            engine.shutdown()
        self.batcher.close()
        self._target = self._draft = None
        self._wrapped.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ----------------------------------------------------------------------------
    def generate(self, prompt: Prompt, *, mode: str | None = None, speculation: bool = True, **overrides: Any) -> Result:
        """Solve one question (plain text or chat messages) and return the result with its trace.

        ``mode`` picks ``ar``, ``lr``, ``sd`` or ``lr+sd`` for this call; ``speculation=False`` is
        ``mode="ar"`` (no speculation of either kind);
        ``overrides`` are config keys for this call only (``gamma=3``, ``temperature=0.7``,
        ``verifier="normalized"``, ``max_total_tokens=256``, ...).
        """
        stream = self.stream(prompt, mode=mode, speculation=speculation, **overrides)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(
        self, prompt: Prompt, *, mode: str | None = None, speculation: bool = True, **overrides: Any
    ) -> ResultStream:
        """Iterate over the steps as they are committed; ``.result`` holds the `Result` afterwards.

        Bad input (empty prompt, unknown override, prompt beyond the context) raises here, before
        the first step. Stopping the iteration early ends the generation (finish "cancelled").
        """
        config = with_overrides(self.config, overrides)
        if not speculation:
            mode = "ar"
        state = self.start(prompt, mode, config)
        return ResultStream(self, state)

    async def agenerate(
        self, prompt: Prompt, *, mode: str | None = None, speculation: bool = True, **overrides: Any
    ) -> Result:
        """`generate` in a worker thread, for asyncio code (concurrent tasks share the engines' batches)."""
        import asyncio  # lazily: only asyncio callers pay for importing it (and its socket/ssl)

        return await asyncio.to_thread(self.generate, prompt, mode=mode, speculation=speculation, **overrides)

    def generate_batch(
        self, prompts: Sequence[Prompt], *, mode: str | None = None, concurrency: int | None = None, **overrides: Any
    ) -> list[Result]:
        """Solve several questions at once (at most ``concurrency`` in flight, default: all of them up
        to the target's ``max_batch_rows``); results in input order. The first problem that fails
        raises its error after every other problem has finished."""
        prompts = list(prompts)
        if not prompts:
            return []
        if concurrency is None:
            concurrency = min(len(prompts), self.config.target.max_batch_rows)
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1 (got {concurrency})")
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="lookahead-batch") as pool:
            futures = [pool.submit(self.generate, p, mode=mode, **overrides) for p in prompts]
        for future in futures:  # every problem has finished here
            error = future.exception()
            if error is not None:
                raise error
        return [f.result() for f in futures]

    # -- the loop ------------------------------------------------------------------------------
    def start(self, prompt: Prompt, mode: str | None = None, config: LookaheadConfig | None = None) -> ProblemState:
        """Render the prompt for each engine and check it fits the context."""
        cfg = config or self.config
        mode = self._check_mode(mode or cfg.mode)
        if isinstance(prompt, str):
            messages = build_messages(prompt, cfg.prompt_template, cfg.system_prompt)
        else:
            messages = normalize_messages(prompt)
        target_prompt = self.target.format_chat(messages)
        prompt_tokens = self.target.count_tokens(target_prompt)
        token_limit = cfg.max_total_tokens
        context = self.target.context_length()
        if context is not None:
            if prompt_tokens >= context:
                raise PromptError(
                    f"the prompt has {prompt_tokens} tokens but the target's context holds {context}; "
                    "shorten the question"
                )
            token_limit = min(token_limit, context - prompt_tokens)
        draft_prompt = self._draft_prompt(messages) if uses_step_speculation(mode) else ""
        return ProblemState(
            cfg, mode, re.compile(cfg.final_answer_pattern), messages, target_prompt, draft_prompt, token_limit, prompt_tokens
        )

    def _draft_prompt(self, messages: Messages) -> str:
        """The messages rendered for the draft; a prompt beyond the draft's context is refused."""
        draft_prompt = self.draft.format_chat(messages)
        draft_context = self.draft.context_length()
        if draft_context is not None and self.draft.count_tokens(draft_prompt) >= draft_context:
            raise PromptError(
                f"the prompt has {self.draft.count_tokens(draft_prompt)} tokens but the draft's "
                f"context holds {draft_context}; shorten the question"
            )
        return draft_prompt

    def advance(self, state: ProblemState) -> Iterator[StepRecord]:
        """Run rounds until a stop rule fires, yielding committed steps."""
        play_round = ROUNDS[self._round_kind(state)]
        own_workers = _OwnWorkers()
        context = self._round_context(state, own_workers)
        with self.batcher.client(state.cancel), own_workers:  # its calls join the batches; cancel leaves them
            while state.finish_reason is None:
                if state.cancel.is_set():
                    state.finish_reason = "cancelled"
                    return
                round_start = time.perf_counter()
                try:
                    proposal = play_round(context, state)
                except GenerationCancelled:
                    state.finish_reason = "cancelled"
                    return
                yield from self.commit(state, proposal, time.perf_counter() - round_start)
                carry_ahead(state, proposal.ahead_of, proposal.ahead)  # pipelined: steps drafted beyond the round

    def _round_kind(self, state: ProblemState) -> str:
        """Which strategy of `ROUNDS` runs this problem's rounds.

        (`LookaheadConfig.validate` refuses pipeline or width > 1 with adaptive_gamma, and width > 1
        with pipeline.)
        """
        if not uses_step_speculation(state.mode):
            return "ar"
        if state.config.adaptive_gamma:
            return "chain"
        if self.pipelines(state):
            return "pipelined"
        return "tree" if state.config.width > 1 else "chain"

    def _round_context(self, state: ProblemState, own_workers: _OwnWorkers | None = None) -> RoundContext:
        """What this problem's rounds may call: the engines, its verifier, the target's workers, and
        its adaptive-γ policy (``adaptive_gamma`` in a step-speculation mode).

        Pipelined rows of an in-process target run on ``own_workers``, one thread of the problem's
        own: its rows run in order (a row after a rejection is never started) while the rows of
        other problems in flight merge with them in the batcher.
        """
        adaptive = state.config.adaptive_gamma and uses_step_speculation(state.mode)
        load_workers = self._target_workers
        if own_workers is not None and isinstance(self.target, BatchingEngine):
            load_workers = own_workers
        return RoundContext(
            target=self.target,
            load_draft=lambda: self.draft,
            load_verifier=lambda: self.verifier_for(state.config),
            load_workers=load_workers,
            policy=self.policy_for(state.config, state.mode) if adaptive else None,
        )

    def pipelines(self, state: ProblemState) -> bool:
        """Are this problem's rounds pipelined? ``pipeline`` on, a step-speculation mode, and safe:

        not when draft and target are one engine object (its calls cannot overlap). A verifier
        that borrows an engine (llm_judge, cascade) is safe: the reasoner's engines are always
        thread-safe (an in-process one sits behind its batcher).
        """
        if not (state.config.pipeline and uses_step_speculation(state.mode)):
            return False
        return self.draft is not self.target

    # -- the paper's verbs: propose, expand, judge (`lookahead.rounds.chain`), commit ----------
    def propose(self, state: ProblemState, gamma: int | None = None) -> list[str]:
        """Draft up to γ complete steps, one after another (each from the previous ones).

        ``gamma``: this round's depth (default ``config.gamma``; 0 drafts nothing).
        """
        return chain.propose(self._round_context(state), state, state.config.gamma if gamma is None else gamma)

    def expand(self, state: ProblemState, drafts: list[str]) -> list[Completion]:
        """The target's own step from P, P+d_1, ..., P+d_1..d_k: one batched call."""
        return chain.expand(self._round_context(state), state, drafts)

    def judge(self, state: ProblemState, drafts: list[str], targets: list[Completion]) -> list[Verdict]:
        """Verdicts for (d_i, t_i); a verifier failure rejects every pair and is counted."""
        return chain.judge(self._round_context(state), state, drafts, targets)

    def commit(self, state: ProblemState, proposal: Proposal, seconds: float) -> Iterator[StepRecord]:
        """Commit the accepted run of draft steps, then the fallback (or bonus) target step.

        The stop rules are checked after every step; ``seconds`` (the round's wall time) is split
        evenly over the steps in the trace.
        """
        accepted = accepted_run(proposal)
        to_commit: list[tuple[str, str, Completion | None]] = [("draft", d, None) for d in proposal.drafts[:accepted]]
        if accepted < len(proposal.targets):
            fallback = proposal.targets[accepted]
            to_commit.append(("target", fallback.text, fallback))
        share = seconds / max(len(to_commit), 1)  # seconds per committed step
        committed = 0
        for depth, (source, text, completion) in enumerate(to_commit, start=1):
            if state.finish_reason is not None:
                break
            record = self._append(state, text, source, depth, share)
            _trace(record, proposal, depth)
            committed += 1
            state.finish_reason = _stop_rule(state, text, completion)
            yield record
        if not to_commit:  # nothing could be generated (no budget): end instead of looping
            state.finish_reason = "length"
        verdicts = [v.accepted for v in proposal.verdicts]
        state.stats.observe_round(len(proposal.drafts), verdicts, min(accepted, committed), committed)
        state.rounds += 1

    def carry(self, state: ProblemState, run: RoundInFlight) -> None:
        """After committing pipelined ``run``: keep e_2, e_3, ... if the new prefix is P + d_1..d_γ + e_1."""
        carry_ahead(state, run.prefix + run.drafted, run.ahead)

    def _append(self, state: ProblemState, text: str, source: str, depth: int, seconds: float) -> StepRecord:
        before = state.tokens
        state.completion += text
        state.tokens = self.target.count_tokens(state.completion)
        record = StepRecord(
            index=len(state.steps),
            round=state.rounds,
            depth=depth,
            text=text,
            source=source,  # type: ignore[arg-type]
            tokens=state.tokens - before,
            seconds=seconds,
        )
        state.steps.append(record)
        return record

    def result(self, state: ProblemState, wall_time_s: float) -> Result:
        stats = state.stats.summary()
        # orchestration: wall time not spent inside draft, target or verifier calls (seconds)
        # (pipelined rounds: the busy time is draft + target + verify less the time they overlapped)
        busy = state.stats.draft_s + state.stats.target_s + state.stats.verify_s - state.stats.overlap_s
        stats["other_s"] = round(max(wall_time_s - busy, 0.0), 4)
        if state.config.adaptive_gamma and uses_step_speculation(state.mode):
            # the adaptive policy's estimates when the problem ended: why its rounds were ar rounds
            stats["adaptive"] = self.policy_for(state.config, state.mode).snapshot()
        return Result(
            text=state.completion,
            mode=state.mode,
            steps=state.steps,
            prompt_tokens=state.prompt_tokens,
            completion_tokens=state.tokens,
            finish_reason=state.finish_reason or "stop",
            wall_time_s=wall_time_s,
            rounds=state.rounds,
            stats=stats,
            answer=extract_answer(state.completion),
        )

    @staticmethod
    def _check_mode(mode: str) -> str:
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r} is unknown; choose one of {', '.join(MODES)}")
        return mode


class _OwnWorkers:
    """One problem's own target-row thread (created on first use, shut when its rounds end)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookahead-rows")
        return self._pool

    def __enter__(self) -> _OwnWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _trace(record: StepRecord, proposal: Proposal, depth: int) -> None:
    """Fill in the draft step, target step and verdict at ``depth`` that led to a committed step."""
    drafts, targets, verdicts = proposal.drafts, proposal.targets, proposal.verdicts
    if depth > len(drafts):  # the bonus step (or an ar step): no draft step at this depth
        record.target_text = record.text
        return
    record.draft_text = drafts[depth - 1]
    record.target_text = targets[depth - 1].text if depth - 1 < len(targets) else None
    record.verdict = verdicts[depth - 1]
    if record.source == "target" and record.verdict.accepted:  # matched, but the target was capped
        record.verdict = dataclasses.replace(
            record.verdict, accepted=False, reason="target step did not end on the delimiter"
        )


def _stop_rule(state: ProblemState, text: str, completion: Completion | None) -> str | None:
    """The stop rule a just-committed step fires, in order: eos, answer, length; None to go on."""
    if completion is not None and completion.finish_reason == "eos":
        return "eos"
    if state.states_answer(text):
        return "answer"
    if state.tokens >= state.token_limit:
        return "length"
    return None


class ResultStream:
    """The steps of one generation as they are committed; ``result`` is set when it ends.

    Example:
        >>> stream = reasoner.stream("What is 17 * 23?")     # doctest: +SKIP
        >>> for step in stream:                              # doctest: +SKIP
        ...     print(step.source, step.text)
        >>> stream.result.answer                             # doctest: +SKIP
    """

    def __init__(self, reasoner: LookaheadReasoner, state: ProblemState) -> None:
        self.state = state  # the problem being advanced
        self.result: Result | None = None  # set once the iteration ends (also when cut short)
        self._reasoner = reasoner
        self._iterator: Iterator[StepRecord] | None = None

    def __iter__(self) -> Iterator[StepRecord]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    def _run(self) -> Iterator[StepRecord]:
        start = time.perf_counter()
        try:
            yield from self._reasoner.advance(self.state)
        finally:
            if self.state.finish_reason is None:
                self.state.finish_reason = "cancelled"
            self.result = self._reasoner.result(self.state, time.perf_counter() - start)

    def cancel(self) -> None:
        """Ask the generation to stop from any thread: an engine call of it that waits in a batch
        leaves at once, a running one finishes; the iteration then ends (finish "cancelled")."""
        self.state.cancel.set()

    def close(self) -> None:
        """Stop generating (in the iterating thread); ``result`` keeps the steps so far."""
        if self._iterator is not None:
            self._iterator.close()  # type: ignore[attr-defined]
        elif self.result is None:
            self.state.finish_reason = self.state.finish_reason or "cancelled"
            self.result = self._reasoner.result(self.state, 0.0)
