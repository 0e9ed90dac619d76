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

With ``pipeline`` (``lr`` / ``lr+sd``) the parts of a round overlap instead of running one after
another (`LookaheadReasoner.pipelined_round`)::

    expand  : t_1 = target(P) starts at once; as soon as d_i exists, t_{i+1} = target(P + d_1 .. d_i)
              starts (one-row calls on a target worker thread; the bonus row by expand's rules)
    propose : d_1, d_2, ..., d_γ in the calling thread while the target rows run (the steps carried
              from the previous round first: no draft call for them)
    judge   : verdict_i = verifier(P + d_1 .. d_{i-1}, d_i, t_i) as soon as d_i and t_i exist; at the
              first rejection (or a t_i not ending on the delimiter) drafting stops, target rows
              not started yet are cancelled, running ones are waited for and discarded
    ahead   : after d_γ, while rows still run and no rejection is known: e_1 = draft(P + d_1 .. d_γ),
              e_2 = draft(P + d_1 .. d_γ + e_1), ... (at most γ steps; none when γ = 1: only e_2.. carry)
    commit  : as above; when P + d_1 .. d_γ + t_{γ+1} was committed and t_{γ+1} == e_1, the next
              round's prefix is the one e_2, e_3, ... were drafted from: they are carried over

Draft and target calls use the same prompts, caps and stop rules as in a sequential round, and a
round still commits d_1 .. d_j plus t_{j+1}, so greedy decoding with the exact verifier commits
the same text as sequential ``lr`` and ``ar``. In-process engines are not thread-safe: the target's
rows run on ONE worker thread per reasoner, the draft in the calling thread (a round runs
sequentially when draft and target are the same engine object, or when the verifier borrows an
in-process engine); a thread-safe target (``thread_safe = True``: `PoolEngine`) gets several
workers, so the rows of a round, and of concurrent problems, run at once. Stats: ``overlap_s``
(`lookahead.stats`) is the time the parts ran at once; ``carried_drafts`` the steps carried over.

With ``width`` w > 1 (sequential rounds, sampled drafts) a round drafts a tree instead of a chain,
as the reference's tree does: every node (the committed text P, then P + a drafted path) gets w
draft steps sampled from it (repeats dropped), down to depth γ (`LookaheadReasoner.tree_round`)::

    propose : w steps from P; w steps from each P + d^(j); ... (w + w^2 + ... + w^γ at most)
    expand  : t(node) = target(node) for the root and every node, ONE batched call
    judge   : every child step against its parent's target step, one verifier call
    commit  : from P, follow the first accepted child while there is one; then its target step

Any accepted step equals (exact verifier) the target's own step from the same prefix, so greedy
targets still commit ``ar``'s text; a round accepts a depth when ANY of its w samples matches.

With ``adaptive_gamma`` the depth of each round is chosen by the reasoner's `AdaptiveGamma`
policy in 0..gamma (0 = an ``ar`` round: no draft call, one target row), which then learns from
the round's acceptance and costs (`lookahead.speedup` is the model it maximises).

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

import asyncio
import dataclasses
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from lookahead.config import (
    MODES,
    EngineConfig,
    LookaheadConfig,
    uses_step_speculation,
    uses_token_speculation,
    with_overrides,
)
from lookahead.adaptive import AdaptiveGamma
from lookahead.engines import create_engine
from lookahead.engines.base import Engine
from lookahead.errors import ConfigError, PromptError
from lookahead.eval.answers import extract_answer
from lookahead.prompts import Messages, build_messages, normalize_messages
from lookahead.stats import RoundStats
from lookahead.steps import is_complete_step
from lookahead.types import Completion, Result, StepRecord, Verdict
from lookahead.verifiers import create_verifier
from lookahead.verifiers.base import Verifier, is_failure


@dataclass
class ProblemState:
    """One problem's state, advanced round by round."""

    config: LookaheadConfig  # the effective config of this request (defaults + its overrides)
    mode: str  # "ar", "lr", "sd" or "lr+sd" (see lookahead.config.MODES)
    final_answer: re.Pattern[str]  # compiled config.final_answer_pattern
    messages: Messages  # the chat messages of the question
    target_prompt: str  # messages rendered with the target's chat template
    draft_prompt: str  # messages rendered with the draft's chat template ("" in ar / sd mode)
    token_limit: int  # budget for the completion (tokens): min(max_total_tokens, context left)
    prompt_tokens: int  # tokens of target_prompt
    completion: str = ""  # the committed steps, joined
    tokens: int = 0  # target tokens of `completion`
    steps: list[StepRecord] = field(default_factory=list)  # the trace
    rounds: int = 0  # rounds run so far
    finish_reason: str | None = None  # set once a stop rule fires
    stats: RoundStats = field(default_factory=RoundStats)
    draft_tokens: int = 0  # tokens the draft generated so far, all its calls (tokens)
    # pipeline: draft steps e_2, e_3, ... the previous round drafted ahead from exactly the text
    # committed now; this round takes them as its first draft steps without drafting them again
    carried_steps: list[str] = field(default_factory=list)


@dataclass
class Proposal:
    """What one round produced before committing."""

    drafts: list[str]  # d_1..d_k (k <= γ), each a complete step
    targets: list[Completion]  # t_1..t_{k+1}; the bonus row is missing when no budget is left
    verdicts: list[Verdict]  # verdict_i for (d_i, t_i), i = 1..k


@dataclass
class RoundInFlight:
    """The bookkeeping of one pipelined round (`LookaheadReasoner.pipelined_round`)."""

    prefix: str  # P: the committed text the round starts from
    carried: list[str]  # draft steps carried from the previous round, used before drafting (steps)
    drafts: list[str] = field(default_factory=list)  # d_1..d_k drafted so far, each a complete step
    rows: list[Future] = field(default_factory=list)  # rows[i]: (t_{i+1}, seconds) from P + d_1..d_i
    verdicts: list[Verdict] = field(default_factory=list)  # verdict_i of the pairs judged so far
    ahead: list[str] = field(default_factory=list)  # e_1, e_2, ...: drafted after d_γ (steps)
    left: int = 0  # token budget left after P + d_1..d_k (tokens)
    drafting: bool = True  # may d_{k+1} still be drafted?
    ahead_open: bool = True  # may another step be drafted ahead?
    fallback_at: int | None = None  # depth of the fallback step, once known (first rejection)

    def proposal(self) -> Proposal:
        """The judged draft steps and the target steps up to the one committed after them."""
        end = len(self.rows) if self.fallback_at is None else self.fallback_at
        targets = [row.result()[0] for row in self.rows[:end]]  # a failed row raises here
        return Proposal(self.drafts[: len(self.verdicts)], targets, list(self.verdicts))


class LookaheadReasoner:
    """Runs ``ar``, ``lr``, ``sd`` or ``lr+sd`` generation over a target engine, a draft engine and
    a verifier.

    Engines are created from the config unless given; the draft is created lazily (``ar`` and
    ``sd`` never load it). Use it as a context manager, or call `close`, to free the engines.
    """

    def __init__(
        self,
        config: LookaheadConfig,
        target: Engine | None = None,
        draft: Engine | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.config = config.validate()
        self._target = target
        self._draft = draft
        self._verifiers: dict[str, Verifier] = {}  # by repr(VerifierConfig), created on first use
        if verifier is not None:
            self._verifiers[repr(config.verifier)] = verifier
        self._lock = threading.RLock()  # engines keep caches: one generation at a time
        self._policies: dict[tuple[int, str, bool], AdaptiveGamma] = {}  # adaptive γ, by `policy_for` key
        self._policy_lock = threading.Lock()  # scheduler threads may create policies at once
        self._workers: ThreadPoolExecutor | None = None  # pipeline: runs target rows, created on first use
        self._workers_lock = threading.Lock()  # scheduler threads may start pipelined rounds at once

    @classmethod
    def from_config(cls, config: LookaheadConfig) -> LookaheadReasoner:
        reasoner = cls(config)
        reasoner.target  # load the target now: errors surface before the first question
        engines = [reasoner.target]
        if uses_step_speculation(config.mode):
            engines.append(reasoner.draft)
        if uses_token_speculation(config.mode):
            for engine in engines:  # load the speculation draft model and check its tokenizer now
                prepare = getattr(engine, "prepare_speculation", None)
                if callable(prepare):
                    prepare()
        return reasoner

    # -- components, created on first use ----------------------------------------------------
    @property
    def target(self) -> Engine:
        if self._target is None:
            self._target = create_engine(self._target_config(), **self._pool_settings())
        return self._target

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
            self._draft = create_engine(self.config.draft, **self._pool_settings())
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
        key = repr(config.verifier)
        if key not in self._verifiers:
            engines = {"target": lambda: self.target, "draft": lambda: self.draft}
            self._verifiers[key] = create_verifier(config.verifier, engines)
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
                costs = getattr(self.target, "batch_costs", None)  # HFEngine: seconds by batch size
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

        One thread for an in-process engine (its calls must not overlap); a thread-safe engine
        (`PoolEngine` merges concurrent calls into batches) gets one per row of γ + 1 rows for each
        problem in flight, so a round's rows, and those of concurrent problems, run at once.
        """
        with self._workers_lock:
            if self._workers is None:
                workers = 1
                if getattr(self.target, "thread_safe", False):
                    workers = min((self.config.gamma + 1) * self.config.concurrency, 64)
                self._workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookahead-target")
            return self._workers

    def close(self) -> None:
        with self._workers_lock:
            workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown(wait=True, cancel_futures=True)
        for engine in {id(e): e for e in (self._target, self._draft) if e is not None}.values():
            engine.shutdown()
        self._target = self._draft = None

    def __enter__(self) -> LookaheadReasoner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ----------------------------------------------------------------------------
    def generate(
        self, prompt: str | Sequence[dict[str, str]], *, mode: str | None = None, speculation: bool = True, **overrides: Any
    ) -> Result:
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
        self, prompt: str | Sequence[dict[str, str]], *, mode: str | None = None, speculation: bool = True, **overrides: Any
    ) -> ResultStream:
        """Iterate over the steps as they are committed; ``.result`` holds the `Result` afterwards.

        Bad input (empty prompt, unknown override, prompt beyond the context) raises here, before
        the first step. Stopping the iteration early ends the generation (finish "cancelled").
        """
        config = with_overrides(self.config, overrides)
        if not speculation:
            mode = "ar"
        with self._lock:
            state = self.start(prompt, mode, config)
        return ResultStream(self, state)

    async def agenerate(
        self, prompt: str | Sequence[dict[str, str]], *, mode: str | None = None, speculation: bool = True, **overrides: Any
    ) -> Result:
        """`generate` in a worker thread, for asyncio code (generations still run one at a time)."""
        return await asyncio.to_thread(self.generate, prompt, mode=mode, speculation=speculation, **overrides)

    def generate_batch(
        self, prompts: Sequence[str | Sequence[dict[str, str]]], *, mode: str | None = None, **overrides: Any
    ) -> list[Result]:
        """Solve several questions, in order (one after another in this process)."""
        return [self.generate(p, mode=mode, **overrides) for p in prompts]

    # -- the loop ------------------------------------------------------------------------------
    def start(
        self, prompt: str | Sequence[dict[str, str]], mode: str | None = None, config: LookaheadConfig | None = None
    ) -> ProblemState:
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
        draft_prompt = ""
        if uses_step_speculation(mode):
            draft_prompt = self.draft.format_chat(messages)
            draft_context = self.draft.context_length()
            if draft_context is not None and self.draft.count_tokens(draft_prompt) >= draft_context:
                raise PromptError(
                    f"the prompt has {self.draft.count_tokens(draft_prompt)} tokens but the draft's "
                    f"context holds {draft_context}; shorten the question"
                )
        return ProblemState(
            cfg, mode, re.compile(cfg.final_answer_pattern), messages, target_prompt, draft_prompt, token_limit, prompt_tokens
        )

    def advance(self, state: ProblemState) -> Iterator[StepRecord]:
        """Run rounds until a stop rule fires, yielding committed steps."""
        adaptive = state.config.adaptive_gamma and uses_step_speculation(state.mode)
        policy = self.policy_for(state.config, state.mode) if adaptive else None
        pipelined = policy is None and self.pipelines(state)  # validate refuses pipeline + adaptive_gamma
        while state.finish_reason is None:
            round_start = time.perf_counter()
            in_flight: RoundInFlight | None = None
            if not uses_step_speculation(state.mode):
                proposal = Proposal(drafts=[], targets=self.expand(state, []), verdicts=[])
            elif pipelined:
                state.stats.observe_gamma(state.config.gamma)
                in_flight = self.pipelined_round(state, state.config.gamma)
                proposal = in_flight.proposal()
            elif state.config.width > 1:  # validate refuses width > 1 with pipeline or adaptive_gamma
                state.stats.observe_gamma(state.config.gamma)
                proposal = self.tree_round(state, state.config.gamma)
            else:
                gamma = policy.choose() if policy is not None else state.config.gamma
                state.stats.observe_gamma(gamma)
                stats = state.stats
                before = (stats.draft_s, stats.target_s, stats.verify_s, state.draft_tokens)
                drafts = self.propose(state, gamma)  # gamma = 0: no draft call, an ar round
                targets = self.expand(state, drafts)
                proposal = Proposal(drafts, targets, self.judge(state, drafts, targets))
                if policy is not None:  # learn before committing: a stream closed mid-round still counts
                    policy.observe(
                        gamma,
                        accepted_run(proposal),
                        proposal.verdicts,
                        draft_s=stats.draft_s - before[0],
                        target_s=stats.target_s - before[1],
                        target_rows=len(targets),
                        verify_s=stats.verify_s - before[2],
                        draft_tokens=state.draft_tokens - before[3],
                        target_tokens=sum(t.completion_tokens for t in targets),
                    )
            yield from self.commit(state, proposal, time.perf_counter() - round_start)
            if in_flight is not None:
                self.carry(state, in_flight)

    def propose(self, state: ProblemState, gamma: int | None = None) -> list[str]:
        """Draft up to γ complete steps, one after another (each from the previous ones).

        ``gamma``: this round's depth (default ``config.gamma``; 0 drafts nothing).
        """
        cfg = state.config
        drafts: list[str] = []
        text = state.completion
        start = time.perf_counter()
        for _ in range(cfg.gamma if gamma is None else gamma):
            left = state.token_limit - self.target.count_tokens(text)
            if left <= 0:
                break  # no budget left for a target step after this prefix
            step = self._draft_step(state, text, left)
            if step is None:
                break  # an incomplete draft step can never be accepted: stop looking ahead
            drafts.append(step)
            text += step
            if cfg.stop_at_final_answer and state.final_answer.search(step):
                break  # the problem ends here if this step is accepted
        state.stats.draft_s += time.perf_counter() - start
        return drafts

    def expand(self, state: ProblemState, drafts: list[str]) -> list[Completion]:
        """The target's own step from P, P+d_1, ..., P+d_1..d_k: one batched call.

        The bonus row (after all k drafts) is left out when no budget is left after them or the
        last draft states the final answer.
        """
        cfg = state.config
        prompts, params = [], []
        prefix = state.completion
        for i in range(len(drafts) + 1):
            if i > 0:
                prefix += drafts[i - 1]
            left = state.token_limit - (self.target.count_tokens(prefix) if i else state.tokens)
            is_bonus = i == len(drafts) and i > 0
            if left <= 0 or (is_bonus and cfg.stop_at_final_answer and state.final_answer.search(drafts[-1])):
                break
            prompts.append(state.target_prompt + prefix)
            params.append(dataclasses.replace(cfg.target_sampling, max_new_tokens=min(cfg.max_step_tokens, left)))
        start = time.perf_counter()
        targets = []
        if prompts:
            targets = self.target.generate(prompts, params, stop=[cfg.step_delimiter], **_speculate(state.mode))
        state.stats.target_s += time.perf_counter() - start
        state.stats.observe_tokens("target", targets)
        state.stats.target_prompt_tokens += sum(t.prompt_tokens for t in targets)
        state.stats.target_cached_tokens += sum(t.cached_tokens for t in targets)
        return targets

    def tree_round(self, state: ProblemState, gamma: int) -> Proposal:
        """One round over a tree of draft steps (``width`` > 1; see the module docstring): the
        accepted path's draft steps, its target steps and verdicts, as a chain round's `Proposal`.

        A node is a path of draft steps from P. Its w children are draft steps sampled from it
        (repeats and incomplete steps dropped); a node past the budget, or whose last step states
        the final answer, gets none. The proposal ends with the first child of the last node
        reached and that child's (rejecting) verdict, so the stats count the depth that failed.
        """
        cfg = state.config
        start = time.perf_counter()
        levels: list[list[tuple[str, ...]]] = [[()]]
        children: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        for _ in range(gamma):
            level: list[tuple[str, ...]] = []
            for node in levels[-1]:
                if node and cfg.stop_at_final_answer and state.final_answer.search(node[-1]):
                    continue  # the problem ends at this node if its path is accepted
                text = state.completion + "".join(node)
                left = state.token_limit - self.target.count_tokens(text)
                if left <= 0:
                    continue
                kids = children.setdefault(node, [])
                for _ in range(cfg.width):
                    step = self._draft_step(state, text, left)
                    if step is not None and node + (step,) not in kids:
                        kids.append(node + (step,))
                level.extend(kids)
            if not level:
                break
            levels.append(level)
        state.stats.draft_s += time.perf_counter() - start

        nodes = [node for level in levels for node in level]
        rows = self._tree_rows(state, nodes)
        pairs = [(parent, child) for parent in nodes for child in children.get(parent, []) if parent in rows]
        context = _judge_context(state)
        verdicts = self._verify(
            state,
            [context + "".join(parent) for parent, _ in pairs],
            [child[-1] for _, child in pairs],
            [rows[parent] for parent, _ in pairs],
        ) if pairs else []
        verdict_of = {child: v for (_, child), v in zip(pairs, verdicts)}

        node: tuple[str, ...] = ()
        path_targets: list[Completion] = []
        path_verdicts: list[Verdict] = []
        drafts: list[str] = []
        while node in rows:
            path_targets.append(rows[node])
            kids = [c for c in children.get(node, []) if c in verdict_of]
            chosen = next((c for c in kids if verdict_of[c].accepted and rows[node].finish_reason == "stop"), None)
            if chosen is None:
                if kids:  # the depth that failed: its first sample and the verdict rejecting it
                    drafts.append(kids[0][-1])
                    path_verdicts.append(verdict_of[kids[0]])
                break
            drafts.append(chosen[-1])
            path_verdicts.append(verdict_of[chosen])
            node = chosen
        return Proposal(drafts, path_targets, path_verdicts)

    def _tree_rows(self, state: ProblemState, nodes: list[tuple[str, ...]]) -> dict[tuple[str, ...], Completion]:
        """The target's step from every node of a tree round, one batched call (expand's rules:
        no row past the budget, none after a leaf that states the final answer)."""
        cfg = state.config
        inner = {node[:-1] for node in nodes if node}
        prompts, params, keys = [], [], []
        for node in nodes:
            prefix = state.completion + "".join(node)
            left = state.token_limit - (self.target.count_tokens(prefix) if node else state.tokens)
            leaf_answers = node and node not in inner and cfg.stop_at_final_answer and state.final_answer.search(node[-1])
            if left <= 0 or leaf_answers:
                continue
            prompts.append(state.target_prompt + prefix)
            params.append(dataclasses.replace(cfg.target_sampling, max_new_tokens=min(cfg.max_step_tokens, left)))
            keys.append(node)
        start = time.perf_counter()
        targets = self.target.generate(prompts, params, stop=[cfg.step_delimiter], **_speculate(state.mode)) if prompts else []
        state.stats.target_s += time.perf_counter() - start
        state.stats.observe_tokens("target", targets)
        state.stats.target_prompt_tokens += sum(t.prompt_tokens for t in targets)
        state.stats.target_cached_tokens += sum(t.cached_tokens for t in targets)
        return dict(zip(keys, targets))

    def judge(self, state: ProblemState, drafts: list[str], targets: list[Completion]) -> list[Verdict]:
        """Verdicts for (d_i, t_i); a verifier failure rejects every pair and is counted."""
        if not drafts:
            return []
        contexts, context = [], _judge_context(state)
        for draft in drafts:
            contexts.append(context)
            context += draft
        return self._verify(state, contexts, drafts, targets[: len(drafts)])

    def _verify(
        self, state: ProblemState, contexts: list[str], drafts: list[str], targets: list[Completion]
    ) -> list[Verdict]:
        """One verifier call on the pairs (d_i, t_i) with their contexts; timed, failures rejected."""
        start = time.perf_counter()
        verifier = self.verifier_for(state.config)
        try:
            verdicts = verifier.verify(contexts, drafts, [t.text for t in targets])
            if len(verdicts) != len(drafts):
                raise ValueError(f"verifier returned {len(verdicts)} verdicts for {len(drafts)} pairs")
            if any(is_failure(v) for v in verdicts):  # it failed or timed out and rejected on its own
                state.stats.verifier_failures += 1
        except Exception as exc:  # a broken verifier must not kill the run: reject, count, go on
            state.stats.verifier_failures += 1
            verdicts = [
                Verdict(accepted=False, score=0.0, verifier=verifier.name, reason=f"failed: {exc}")
                for _ in drafts
            ]
        state.stats.verify_s += time.perf_counter() - start
        return verdicts

    # -- the pipelined round (``pipeline``; see the module docstring) ---------------------------
    def pipelines(self, state: ProblemState) -> bool:
        """Are this problem's rounds pipelined? ``pipeline`` on, a step-speculation mode, and safe:

        not when draft and target are one engine object (its calls cannot overlap), nor when the
        verifier borrows an engine (llm_judge, cascade) that is not thread-safe (it would be
        called from two threads at once).
        """
        if not (state.config.pipeline and uses_step_speculation(state.mode)):
            return False
        if self.draft is self.target:
            return False
        if getattr(self.verifier_for(state.config), "needs_engines", False):
            return all(getattr(e, "thread_safe", False) for e in (self.target, self.draft))
        return True

    def pipelined_round(self, state: ProblemState, gamma: int) -> RoundInFlight:
        """One round with draft, target and verifier overlapped; returns it settled.

        The calling thread drafts, submits each target row as soon as its prefix exists, and
        judges each pair as soon as both its steps exist; once the fallback depth is known it
        stops. Every row has finished or been cancelled when this returns, also after an error.
        """
        run = RoundInFlight(prefix=state.completion, carried=state.carried_steps)
        state.carried_steps = []
        stats = state.stats
        busy_before = stats.draft_s + stats.target_s + stats.verify_s
        start = time.perf_counter()
        try:
            run.left = state.token_limit - state.tokens
            if run.left > 0:
                self._submit_row(state, run)  # t_1 from P
            else:
                run.drafting = False  # no budget: nothing to draft or to compute
            while True:
                pending = [row for row in run.rows if not row.done()]  # before judging: none left = all judged
                self._judge_ready(state, run)
                if run.fallback_at is not None:
                    break  # the first rejection (or a capped target step): the round ends there
                if run.drafting:
                    self._draft_next(state, run, gamma)
                elif pending and run.ahead_open and 2 <= gamma == len(run.drafts) and len(run.rows) == gamma + 1:
                    # (γ = 1 carries nothing: e_1 only stands for the bonus step, e_2 would be γ + 1 ahead)
                    self._draft_ahead(state, run, gamma)
                elif pending:
                    wait(pending, return_when=FIRST_COMPLETED)
                else:
                    break  # every row done and every pair judged: all accepted
        finally:
            self._settle_rows(state, run)
        wall = time.perf_counter() - start
        stats.overlap_s += max(stats.draft_s + stats.target_s + stats.verify_s - busy_before - wall, 0.0)
        return run

    def carry(self, state: ProblemState, run: RoundInFlight) -> None:
        """After committing ``run``: keep e_2, e_3, ... if the new prefix is P + d_1..d_γ + e_1.

        They were drafted from exactly that text, with the budget it leaves, so they are the
        draft steps the next round would draft (with a greedy draft) -- it uses them instead.
        """
        if run.ahead and state.finish_reason is None and state.completion == run.prefix + "".join(run.drafts) + run.ahead[0]:
            state.carried_steps = run.ahead[1:]

    def _submit_row(self, state: ProblemState, run: RoundInFlight) -> None:
        """Start the target row from P + d_1..d_k (k = the draft steps so far), capped as in `expand`."""
        cfg = state.config
        prompt = state.target_prompt + run.prefix + "".join(run.drafts)
        params = dataclasses.replace(cfg.target_sampling, max_new_tokens=min(cfg.max_step_tokens, run.left))
        row = self._target_workers().submit(
            _timed_row, self.target, prompt, params, cfg.step_delimiter, _speculate(state.mode)
        )
        run.rows.append(row)

    def _draft_next(self, state: ProblemState, run: RoundInFlight, gamma: int) -> None:
        """Add d_{k+1} (a carried step, or one draft call as in `propose`) and start its target row.

        The row after it is left out as `expand` leaves the bonus row out: no budget left, or the
        step states the final answer (drafting stops there too, as in `propose`).
        """
        cfg = state.config
        if run.carried:
            step: str | None = run.carried.pop(0)
            state.stats.carried_drafts += 1
        else:
            start = time.perf_counter()
            step = self._draft_step(state, run.prefix + "".join(run.drafts), run.left)
            state.stats.draft_s += time.perf_counter() - start
        if step is None:
            run.drafting = False  # an incomplete draft step can never be accepted
            return
        run.drafts.append(step)
        run.left = state.token_limit - self.target.count_tokens(run.prefix + "".join(run.drafts))
        states_answer = bool(cfg.stop_at_final_answer and state.final_answer.search(step))
        if run.left > 0 and not states_answer:
            self._submit_row(state, run)
        if run.left <= 0 or states_answer or len(run.drafts) >= gamma:
            run.drafting = False

    def _draft_ahead(self, state: ProblemState, run: RoundInFlight, gamma: int) -> None:
        """Draft the next step after P + d_1..d_γ + e_1.. (at most γ), by `propose`'s rules."""
        cfg = state.config
        text = run.prefix + "".join(run.drafts) + "".join(run.ahead)
        left = state.token_limit - self.target.count_tokens(text) if run.ahead else run.left
        step = None
        if left > 0:
            start = time.perf_counter()
            step = self._draft_step(state, text, left)
            state.stats.draft_s += time.perf_counter() - start
        if step is None:
            run.ahead_open = False
            return
        run.ahead.append(step)
        if len(run.ahead) >= gamma or (cfg.stop_at_final_answer and state.final_answer.search(step)):
            run.ahead_open = False

    def _draft_step(self, state: ProblemState, text: str, left: int) -> str | None:
        """One draft call after committed-plus-drafted ``text`` with ``left`` > 0 tokens of budget
        left there; the draft step, or None when it is not complete (then it can never be accepted).

        A draft step longer than the budget left could never match: the target's step from the
        same prefix is capped there. (Counted in draft tokens: exact for a shared tokenizer.)
        """
        cfg = state.config
        params = dataclasses.replace(cfg.draft_sampling, max_new_tokens=min(cfg.max_step_tokens, left))
        step = self.draft.generate([state.draft_prompt + text], params, stop=[cfg.step_delimiter], **_speculate(state.mode))[0]
        state.stats.observe_tokens("draft", [step])
        state.draft_tokens += step.completion_tokens
        if step.finish_reason != "stop" or not is_complete_step(step.text, cfg.step_delimiter):
            return None
        return step.text

    def _judge_ready(self, state: ProblemState, run: RoundInFlight) -> None:
        """Judge, in depth order, every pair (d_i, t_i) whose two steps exist; note the fallback depth.

        A target step that did not end on the delimiter ends the round at its depth whatever the
        verdict (it is never matched; `accepted_run`), even before its draft step exists.
        """
        while run.fallback_at is None:
            i = len(run.verdicts)  # pair i + 1 is next
            if i >= len(run.rows) or not run.rows[i].done():
                return
            target = run.rows[i].result()[0]
            capped = target.finish_reason != "stop"
            if i < len(run.drafts):
                context = _judge_context(state) + "".join(run.drafts[:i])
                verdict = self._verify(state, [context], [run.drafts[i]], [target])[0]
                run.verdicts.append(verdict)
                if capped or not verdict.accepted:
                    run.fallback_at = i + 1
            elif capped:
                run.fallback_at = i + 1  # whatever d_{i+1} would be, t_{i+1} is the fallback step
            else:
                return  # d_{i+1} does not exist (yet)
        run.drafting = run.ahead_open = False

    def _settle_rows(self, state: ProblemState, run: RoundInFlight) -> None:
        """Cancel the rows not started, wait for the running ones, count every row that ran."""
        for row in run.rows:
            row.cancel()  # only rows still queued are cancelled
        wait(run.rows)
        stats = state.stats
        for row in run.rows:
            if row.cancelled() or row.exception() is not None:
                continue  # a failed row needed by the round raises in `RoundInFlight.proposal`
            completion, seconds = row.result()
            stats.target_s += seconds
            stats.observe_tokens("target", [completion])
            stats.target_prompt_tokens += completion.prompt_tokens
            stats.target_cached_tokens += completion.cached_tokens

    def commit(self, state: ProblemState, proposal: Proposal, seconds: float) -> Iterator[StepRecord]:
        """Commit the accepted run of draft steps, then the fallback (or bonus) target step."""
        drafts, targets, verdicts = proposal.drafts, proposal.targets, proposal.verdicts
        accepted = accepted_run(proposal)
        to_commit: list[tuple[str, str, Completion | None]] = [("draft", d, None) for d in drafts[:accepted]]
        if accepted < len(targets):
            to_commit.append(("target", targets[accepted].text, targets[accepted]))
        share = seconds / max(len(to_commit), 1)
        committed = 0
        for depth, (source, text, completion) in enumerate(to_commit, start=1):
            if state.finish_reason is not None:
                break
            record = self._append(state, text, source, depth, share)
            if depth <= len(drafts):
                record.draft_text = drafts[depth - 1]
                record.target_text = targets[depth - 1].text if depth - 1 < len(targets) else None
                record.verdict = verdicts[depth - 1]
                if source == "target" and record.verdict.accepted:  # matched, but the target was capped
                    record.verdict = dataclasses.replace(
                        record.verdict, accepted=False, reason="target step did not end on the delimiter"
                    )
            else:
                record.target_text = text
            committed += 1
            if completion is not None and completion.finish_reason == "eos":
                state.finish_reason = "eos"
            elif state.config.stop_at_final_answer and state.final_answer.search(text):
                state.finish_reason = "answer"
            elif state.tokens >= state.token_limit:
                state.finish_reason = "length"
            yield record
        if not to_commit:  # nothing could be generated (no budget): end instead of looping
            state.finish_reason = "length"
        state.stats.observe_round(len(drafts), [v.accepted for v in verdicts], min(accepted, committed), committed)
        state.rounds += 1

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


def accepted_run(proposal: Proposal) -> int:
    """Length of the longest run of accepted draft steps from depth 1 (the draft steps committed).

    A draft step counts only if its verdict accepted it and the target step it was compared with
    ended on the delimiter (a capped target step is never matched).
    """
    drafts, targets, verdicts = proposal.drafts, proposal.targets, proposal.verdicts
    accepted = 0
    while (
        accepted < len(drafts)
        and accepted < len(targets)
        and verdicts[accepted].accepted
        and targets[accepted].finish_reason == "stop"
    ):
        accepted += 1
    return accepted


def _judge_context(state: ProblemState) -> str:
    """What a judge needs to read the steps: the question (the last user message), then the
    committed steps (the draft steps before depth i follow)."""
    question = next((m["content"] for m in reversed(state.messages) if m["role"] == "user"), "")
    return f"{question}\n\n{state.completion}" if question else state.completion


def _timed_row(
    engine: Engine, prompt: str, params: Any, delimiter: str, speculate: dict[str, bool]
) -> tuple[Completion, float]:
    """One target row of a pipelined round (run on a target worker thread) and its seconds."""
    start = time.perf_counter()
    completion = engine.generate([prompt], params, stop=[delimiter], **speculate)[0]
    return completion, time.perf_counter() - start


def _speculate(mode: str) -> dict[str, bool]:
    """``speculate=True`` for the engine calls of a token-speculation mode.

    Left out otherwise, so engines written before the ``speculate`` keyword still work in the
    modes that do not need it.
    """
    return {"speculate": True} if uses_token_speculation(mode) else {}


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
        with self._reasoner._lock:
            start = time.perf_counter()
            try:
                yield from self._reasoner.advance(self.state)
            finally:
                if self.state.finish_reason is None:
                    self.state.finish_reason = "cancelled"
                self.result = self._reasoner.result(self.state, time.perf_counter() - start)

    def close(self) -> None:
        """Stop generating (frees the reasoner for other requests); ``result`` keeps the steps so far."""
        if self._iterator is not None:
            self._iterator.close()  # type: ignore[attr-defined]
        elif self.result is None:
            self.state.finish_reason = self.state.finish_reason or "cancelled"
            self.result = self._reasoner.result(self.state, 0.0)
