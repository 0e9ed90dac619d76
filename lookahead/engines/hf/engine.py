"""In-process transformers engine: batched decoding with shared-prefix and cross-call KV reuse.

`HFEngine` runs its own decode loop instead of ``model.generate`` because the Lookahead
Reasoning loop sends it batches whose rows share a long prompt (the γ+1 target continuations all
start from the committed prefix) and that end at very different times (a step stops at the
delimiter). The loop therefore:

1. prefills the longest common token prefix of the rows **once**, at batch size 1, then copies
   its KV cache to every row;
2. reuses, across calls, the KV cache of the longest prefix it has already computed (rows of the
   last few calls, prompt plus generated tokens, kept least-recently-used under a row and token
   budget: `lookahead.engines.hf.prefix_cache`), so a call that continues an earlier one only
   pays for the new tokens (``Completion.cached_tokens``). When the rows of a call come from
   different problems (the Ray pool merges them) they share almost no prefix; then each row
   reuses its OWN longest remembered prefix (layout ``[pads][cached_i][suffix_i][pads]``, see
   `HFEngine._prefill_per_row`); the engine takes whichever of the two layouts feeds fewer
   prompt tokens;
3. drops a row from the running batch as soon as it ends (stop string, EOS or its own
   ``max_new_tokens``), so the remaining rows decode at a smaller batch size (or a cheaper
   larger one: `lookahead.engines.hf.batch_costs`);
4. checks stop strings on a short decoded tail of each row, and decodes the whole row only when a
   stop string may have appeared;
5. lets rows **join the running loop** (`HFEngine.generate_requests`, used by the reasoner's
   batcher): between two forward passes it asks for more callers' rows, prefills them and appends
   them to the batch (the shorter of the two caches is left-padded with masked columns; positions
   are explicit, so a joined row decodes as it would alone), and hands each caller its completions
   the moment its last row ends, remembering the row for the prefix cache at once. Without it a
   step that ends early leaves its caller waiting for the call's longest row, and a caller that
   arrives during a call waits for the whole call (token-level continuous batching; plain decoding
   only, not token speculation).

Rows have different prompt lengths after the shared prefix. They are padded at the END of their
prompt suffix (layout ``[shared prefix][suffix_i][pads][generated...]``): pads are masked out of
attention and every real token gets the RoPE position an unpadded run would give it (explicit
``position_ids``), so a batched row produces the same tokens as the same row alone. Padding after
the suffix (rather than before it) means no query position is ever fully masked, which some SDPA
kernels turn into NaN.

**Token-level speculative decoding** (``generate(..., speculate=True)``, modes ``sd`` / ``lr+sd``)
runs inside the same batched loop, for every row of the batch at once (transformers' assisted
generation is limited to batch size 1). Vocabulary: each decode iteration is one **verification
pass**: every live row feeds its last committed token plus up to ``num_tokens`` **proposed tokens**,
the target scores them all in ONE forward pass, and the row commits the longest **accepted** prefix
plus one token of the target's own (the correction at the first rejection, or the **bonus token**
when all were accepted), so every pass commits >= 1 token per row. Proposals come from

- ``ngram`` (prompt lookup, `ngram_propose`): the tokens that followed the most recent earlier
  occurrence of the row's last n tokens (n = ``max_ngram`` down to ``min_ngram``), or
- ``draft``: a small model sharing the tokenizer, run autoregressively over the whole batch with
  its own KV cache. That cache mirrors the target's column for column (same padded layout, same
  mask, same holes), so the draft never recomputes the prefix; the price is one extra draft
  forward per pass (it also feeds its last proposal, to keep the mirror), i.e. ``K + 1`` batched
  single-token draft forwards + 1 target forward of width ``K + 1`` per pass (K = longest proposal).

Greedy rows accept a proposal while it equals the target's argmax (output identical to plain
decoding); sampled rows use speculative rejection sampling (`accept_or_resample`), which keeps the
target's distribution after its temperature / top-k / top-p processing. Rejected positions stay in
the KV cache as masked holes (trailing holes of the whole batch are cropped), so nothing leaks
into later tokens or into the cross-call prefix cache. Holes inside the batch stay until the
call ends (one call is one step, at most ``max_new_tokens`` passes), so attention may run over
up to ``K + 1`` cache columns per pass instead of the accepted ones; the remembered rows drop them. Rows may propose different lengths (padded
and masked); a row that reaches a stop string, EOS or its token cap inside an accepted run ends
there. The first token of every call comes from the prefill, without speculation.

**Copying from the context** (``EngineConfig.copy``, meant for a small draft): where the row's
last n tokens occurred earlier in its prompt or text, the engine picks only among the tokens that
followed those occurrences (`copy_candidates`); elsewhere it picks as usual. It applies to plain
decoding and to verification passes alike, so token-level speculation keeps the row's output.

Which models load, and how weights are shared, is `lookahead.engines.hf.models`. Only
full-attention decoder models are supported (no sliding-window or linear-attention layers): the
padded layout and the prefix cache rely on one plain KV tensor per layer.

Example:
    >>> from lookahead.config import EngineConfig, SamplingParams
    >>> engine = HFEngine.from_config(EngineConfig(model="smollm2-135m-instruct"))  # doctest: +SKIP
    >>> prompt = engine.format_chat([{"role": "user", "content": "What is 2+2?"}])  # doctest: +SKIP
    >>> [c.text for c in engine.generate([prompt] * 2, SamplingParams(max_new_tokens=16),
    ...                                  stop=["\\n\\n"])]                           # doctest: +SKIP
    >>> out = engine.generate([prompt], SamplingParams(max_new_tokens=16), speculate=True)  # doctest: +SKIP
    >>> out[0].spec_accepted_tokens, out[0].spec_verify_passes                     # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache

from lookahead.config import CopyConfig, EngineConfig, SamplingParams, SpeculationConfig
from lookahead.engines.base import DecodeStats, EngineBase, RowRequest, check_prompts, clean_stops, row_params
from lookahead.engines.hf import text as hf_text
from lookahead.engines.hf.batch_costs import BatchCostCurve, plan_batch
from lookahead.engines.hf.logprobs import label_logprobs_of
from lookahead.engines.hf.models import (
    DTYPES,
    acquire,
    cache_root,
    check_full_attention,
    output_vocab_size,
    release,
    resolve_device,
    resolve_model,
)
from lookahead.engines.hf.prefix_cache import (
    PREFIX_CACHE_ROWS,
    PREFIX_CACHE_TOKENS,
    PrefixCache,
    RememberedRow,
    capture_row,
    common_prefix_len,
    left_padded_cache,
)
from lookahead.engines.hf.token_spec import (
    accept_or_resample,
    fit_vocab,
    greedy_accept,
    ngram_propose,
    restrict_to_copies,
    sample_row,
    sampling_probs,
)
from lookahead.engines.torch_thread import torch_thread
from lookahead.engines.torch_thread import waiting as torch_waiting
from lookahead.errors import ConfigError, ModelLoadError, PromptError
from lookahead.types import Completion

logger = logging.getLogger(__name__)

MIN_STOP_WINDOW = 8  # tokens decoded for the cheap stop-string check, at least (tokens)


# --------------------------------------------------------------------------------------------
# Decode-loop state


@dataclass
class _Row:
    """One prompt of a `generate` call while it decodes."""

    index: int  # position of the row in the call's input (0-based)
    prompt_ids: list[int]  # prompt tokens (no special tokens added)
    params: SamplingParams  # this row's sampling settings and token cap
    generated: list[int] = field(default_factory=list)  # sampled tokens, EOS excluded
    completion: Completion | None = None  # set when the row has finished
    fed_ids: list[int] | None = None  # tokens whose KV is in the cache when it finished
    spec_proposed: int = 0  # token speculation: tokens proposed for this row (tokens)
    spec_accepted: int = 0  # of those, accepted and used by the row (tokens)
    spec_passes: int = 0  # verification forward passes this row took part in (passes)
    cached: int = 0  # prompt tokens whose KV came from the prefix cache (tokens)
    owner: RowRequest | None = None  # the caller's request it belongs to (generate_requests only)
    started: float = 0.0  # perf_counter when the row entered the loop (s)


@dataclass
class _Batch:
    """The running batch of one `generate` call, one entry per batch position.

    A position holds a live row or is a **filler** (a finished or duplicated row kept only
    because that batch size decodes faster; see `plan_batch`).
    """

    slots: list[_Row | None]  # the row decoded at each position, None for a filler
    cache: DynamicCache  # the target's KV cache, [positions, kv_heads, columns, head_dim] per layer
    draft_cache: DynamicCache | None  # the speculation draft's mirror of it (``draft`` method only)
    mask: torch.Tensor  # [positions, columns] attention mask over the cache columns (1 = real token)
    next_pos: torch.Tensor  # [positions] RoPE position of each position's next fed token
    emitted: list[list[int]]  # tokens each position committed in the last forward pass
    accepted: list[int]  # of those, how many (leading) were accepted proposals (tokens)
    replan: bool = True  # a row ended since the batch size was last planned (plan before step 1 too)

    def live(self) -> list[int]:
        """Positions that decode a row (not fillers)."""
        return [j for j, r in enumerate(self.slots) if r is not None]


# --------------------------------------------------------------------------------------------
# The engine


class HFEngine(EngineBase):
    """`Engine` backed by an in-process transformers causal LM (see the module docstring)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        name: str | None = None,
        prefix_cache: bool = True,
        batch_costs: Sequence[float] | BatchCostCurve | None = None,
        speculation: SpeculationConfig | None = None,
        draft_model: PreTrainedModel | None = None,
        draft_tokenizer=None,
        prefix_cache_rows: int = PREFIX_CACHE_ROWS,
        prefix_cache_tokens: int = PREFIX_CACHE_TOKENS,
        copy: CopyConfig | None = None,
    ):
        """``speculation`` configures ``generate(..., speculate=True)``; for its ``draft`` method
        pass the small model as ``draft_model`` (its tokenizer, if given, must have the same
        vocabulary) or let `from_config` load ``speculation.draft_model`` on first use.
        ``prefix_cache_rows`` / ``prefix_cache_tokens`` bound the rows the prefix cache keeps
        across calls (least recently used rows are evicted first; see `PREFIX_CACHE_TOKENS`).
        ``copy`` turns on copying from the context (`CopyConfig`, module docstring)."""
        self.remembered = PrefixCache(prefix_cache, prefix_cache_rows, prefix_cache_tokens)  # cross-call KV rows
        check_full_attention(model)
        model.eval()
        self.model: PreTrainedModel | None = model
        self.tokenizer = tokenizer
        base = Path(str(getattr(model.config, "_name_or_path", "") or "model")).name or "model"
        self.name = name or f"hf:{base}"
        # the decode-step cost curve: a list (seconds at batch size k, index 0 unused), a
        # `BatchCostCurve` measured when first needed, or None = always decode exactly the live rows
        self._costs: list[float] | BatchCostCurve | None = (
            batch_costs if isinstance(batch_costs, BatchCostCurve) or batch_costs is None else list(batch_costs)
        )
        self.device = next(model.parameters()).device
        self._eos_ids = hf_text.eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = min(self._eos_ids) if self._eos_ids else 0
        self._pad_id = int(pad)  # fed at pad positions, which attention masks out anyway
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._generator = torch.Generator(device=self.device)
        self._generator.seed()
        self._seed: int | None = None  # the seed the generator was last seeded with
        self._shared_key: tuple[str, ...] | None = None  # its key in the loaded-model cache, if any
        self.speculation = speculation or SpeculationConfig()  # token-level SD settings
        self.copy = copy if copy is not None and copy.enabled else None  # copying from the context
        self._spec_model: PreTrainedModel | None = None  # speculation draft model, once loaded
        self._spec_source: EngineConfig | None = None  # where from_config loads it from (lazily)
        self._spec_shared_key: tuple[str, ...] | None = None  # its key in the loaded-model cache, if any
        self._spec_warned = False  # the "draft context too short" warning was logged
        self._spec_logits_to_keep = False  # does the draft model's forward take logits_to_keep?
        if draft_model is not None:
            self._attach_draft(draft_model, draft_tokenizer or tokenizer, "the given draft model")

    @property
    def batch_costs(self) -> list[float] | None:
        """Seconds of one decode step by batch size (index 0 unused) where known; None when there
        is no curve or it is not measured yet (`BatchCostCurve`: measured on first need)."""
        return self._costs.known if isinstance(self._costs, BatchCostCurve) else self._costs

    @property
    def prefix_cache(self) -> bool:
        """Does the engine reuse KV rows across calls (``EngineConfig.prefix_cache``)?"""
        return self.remembered.enabled

    def cache_usage(self) -> dict[str, int]:
        """The prefix cache's rows and tokens now, next to their bounds."""
        return self.remembered.usage()

    @torch_thread
    def clear_prefix_cache(self) -> bool:
        """Forget the remembered rows (on the torch thread: never under a running call)."""
        self.remembered.clear()
        return True

    @property
    def prefix_cache_rows(self) -> int:
        return self.remembered.max_rows

    @property
    def prefix_cache_tokens(self) -> int:
        return self.remembered.max_tokens

    @classmethod
    @torch_thread
    def from_config(cls, cfg: EngineConfig) -> HFEngine:
        """Load (or reuse the already loaded copy of) ``cfg.model`` and wrap it in an engine."""
        if cfg.dtype not in DTYPES:
            raise ConfigError(f"dtype must be float32, bfloat16 or float16 (got {cfg.dtype!r})")
        device = resolve_device(cfg.device)
        resolved = resolve_model(cfg)
        key, shared = acquire(resolved, cfg.dtype, device, cfg.output_vocab, cfg.cache_dir)
        try:
            costs = None
            if cfg.pad_batches:
                label = resolved.source + ("#output-vocab" if "output-vocab" in key else "")  # another cost curve
                costs = BatchCostCurve(shared.model, label, cfg.dtype, cache_root(cfg.cache_dir))
            engine = cls(
                shared.model,
                shared.tokenizer,
                name=f"hf:{resolved.name}",
                prefix_cache=cfg.prefix_cache,
                batch_costs=costs,
                speculation=cfg.speculation,
                # optional EngineConfig fields: the defaults hold where a config does not set them
                prefix_cache_rows=cfg.prefix_cache_rows,
                prefix_cache_tokens=cfg.prefix_cache_tokens,
                copy=cfg.copy,
            )
        except BaseException:
            release(key)
            raise
        engine._shared_key = key
        if cfg.speculation.draft_model:
            engine._spec_source = EngineConfig(
                model=cfg.speculation.draft_model, dtype=cfg.dtype, device=cfg.device, cache_dir=cfg.cache_dir
            )
        return engine

    # ---- the speculation draft model ----------------------------------------------------------

    @torch_thread
    def prepare_speculation(self) -> None:
        """Load the speculation draft model now (``speculation.method == "draft"``) and check it.

        `generate(..., speculate=True)` calls this on first use; call it earlier to surface a
        missing model or a tokenizer mismatch (ConfigError) before the first question.
        """
        if self.speculation.method != "draft" or self._spec_model is not None:
            return
        if self._spec_source is None:
            raise ConfigError(
                "speculation.method is 'draft' but no draft model is set: set "
                "target.speculation.draft_model=PATH (or draft.speculation.draft_model for the draft engine), "
                "or use speculation.method=ngram"
            )
        source = self._spec_source
        key, shared = acquire(
            resolve_model(source), source.dtype, resolve_device(source.device), source.output_vocab, source.cache_dir
        )
        try:
            self._attach_draft(shared.model, shared.tokenizer, f"speculation.draft_model {source.model!r}")
        except BaseException:
            release(key)
            raise
        self._spec_shared_key = key

    def _attach_draft(self, model: PreTrainedModel, tokenizer, label: str) -> None:
        """Use ``model`` as the speculation draft after checking it shares the target's vocabulary."""
        if tokenizer is not self.tokenizer and tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ConfigError(
                f"{label} does not share the tokenizer of {self.name} (the vocabularies differ: "
                f"{len(tokenizer)} vs {len(self.tokenizer)} tokens); token-level speculation with a draft "
                "model needs the same tokenizer: set target.speculation.draft_model (it defaults to "
                "draft.model) to a model of the same family, or use speculation.method=ngram"
            )
        try:
            check_full_attention(model)
        except ModelLoadError as exc:
            raise ConfigError(f"{label} cannot be used for speculation: {exc}") from None
        if next(model.parameters()).device != self.device:
            where = next(model.parameters()).device
            raise ConfigError(f"{label} is on {where}, the target on {self.device}; put both on one device")
        model.eval()
        self._spec_model = model
        self._spec_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    def _drafter_for(self, rows: list[_Row], speculate: bool) -> PreTrainedModel | None:
        """The draft model this call speculates with (``draft`` method), or None; None too when
        the draft's context cannot hold the call's rows (warned once; the call decodes plainly)."""
        if not speculate or self.speculation.method != "draft":
            return None
        self.prepare_speculation()
        drafter = self._spec_model
        draft_ctx = getattr(drafter.config, "max_position_embeddings", None)
        need = max(len(r.prompt_ids) + r.params.max_new_tokens for r in rows)
        if draft_ctx and need > draft_ctx:
            if not self._spec_warned:
                logger.warning(
                    "%s: the speculation draft model holds %d tokens, this call needs %d: "
                    "decoding without speculation where that happens", self.name, draft_ctx, need
                )
                self._spec_warned = True
            return None
        return drafter

    # ---- Engine protocol ---------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return hf_text.count_tokens(self.tokenizer, text)

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return hf_text.format_chat(self.tokenizer, messages)

    def context_length(self) -> int | None:
        if self.model is None:
            return None
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value else None

    def shutdown(self) -> None:
        self.remembered.clear()
        self.model = None
        self._spec_model = None
        if self._shared_key is not None:
            release(self._shared_key)
            self._shared_key = None
        if self._spec_shared_key is not None:
            release(self._spec_shared_key)
            self._spec_shared_key = None

    @torch_thread
    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams | Sequence[SamplingParams],
        stop: Sequence[str] = (),
        speculate: bool = False,
    ) -> list[Completion]:
        """See `Engine.generate`; ``speculate=True`` runs token-level SD (module docstring).
        Runs on the process's torch thread, as every model call does (`lookahead.engines.torch_thread`)."""
        started = time.perf_counter()
        prompts = check_prompts(prompts)
        if not prompts:
            return []
        if self.model is None:
            raise RuntimeError(f"engine {self.name} was shut down")
        per_row = row_params(params, len(prompts))
        stops = clean_stops(stop)
        rows = self._rows(prompts, per_row)
        drafter = self._drafter_for(rows, speculate)
        speculate = speculate and (self.speculation.method != "draft" or drafter is not None)  # no draft: plain
        self._maybe_reseed(per_row)
        try:
            with torch.inference_mode():
                remembered = self._decode(rows, stops, started, speculate, drafter)
        except BaseException:
            self.remembered.clear()
            raise
        self.remembered.remember(remembered)
        return [row.completion for row in rows]

    @torch_thread
    def generate_requests(
        self,
        requests: Sequence[RowRequest],
        stop: Sequence[str] = (),
        join: Callable[[int], list[RowRequest]] | None = None,
    ) -> DecodeStats:
        """Plain decoding of several callers' rows in one loop that others may join.

        Each request's ``deliver`` gets its completions as soon as its last row ends (or its
        PromptError, alone); between forward passes ``join(live_rows)`` may return more requests,
        which are prefilled and appended to the running batch (module docstring, point 5). A row
        that ends is remembered for the prefix cache at once, so the caller's next step reuses it.
        An error of the loop itself is raised after the undelivered requests are left alone (the
        caller decides what to do with them).
        """
        started = time.perf_counter()
        if self.model is None:
            raise RuntimeError(f"engine {self.name} was shut down")
        stops = clean_stops(stop)
        rows = [row for request in requests for row in self._request_rows(request, started)]
        stats = DecodeStats()
        if not rows:
            return stats
        self._maybe_reseed([row.params for row in rows])
        try:
            with torch.inference_mode():
                self._decode(rows, stops, started, join=join, stats=stats)
        except BaseException:
            self.remembered.clear()
            raise
        return stats

    def _request_rows(self, request: RowRequest, started: float) -> list[_Row]:
        """The rows of ``request``, owned by it; a prompt that cannot run is delivered as its error."""
        try:
            rows = self._rows(check_prompts(request.prompts), row_params(request.params, len(request.prompts)))
        except (PromptError, ConfigError, ValueError, TypeError) as exc:  # this caller's input: its error alone
            request.deliver(exc)
            return []
        for row in rows:
            row.owner, row.started = request, started
        request.rows, request.left = rows, len(rows)
        if not rows:
            request.deliver([])
        return rows

    # ---- logprob judging (capability of `EngineBase`) -----------------------------------------

    @torch_thread
    def next_token_logprobs(
        self, prompts: Sequence[str], candidates: Sequence[str], *, max_batch: int = 16
    ) -> list[dict[str, float]]:
        """Log-probability of each candidate as the next token after each prompt, from one padded
        forward pass per ``max_batch`` prompts; every candidate must be ONE token (ConfigError)."""
        if self.model is None:
            raise RuntimeError(f"engine {self.name} was shut down")
        candidates = list(candidates)
        rows = label_logprobs_of(
            self.model, self.tokenizer, prompts, candidates,
            context=self.context_length(), name=self.name, max_batch=max_batch,
        )
        return [dict(zip(candidates, row, strict=False)) for row in rows]

    def check_logprob_labels(self, labels: Sequence[str], where: str = "") -> None:
        """Each label must be one token of this engine's tokenizer (ConfigError naming the split)."""
        hf_text.single_token_ids(self.tokenizer, labels, where=where)

    def remembered_rows(self) -> list[tuple[int, ...]]:
        """Token ids of the rows the prefix cache keeps now, least recently used first (for tests/stats)."""
        return self.remembered.token_rows()

    # ---- helpers -----------------------------------------------------------------------------

    def _rows(self, prompts: list[str], per_row: list[SamplingParams]) -> list[_Row]:
        """The call's rows, tokenized as the model would have written them; too long ones refused."""
        ids = hf_text.encode_continuations(self.tokenizer, prompts)
        ctx = self.context_length()
        rows = []
        for i, (row_ids, p) in enumerate(zip(ids, per_row, strict=False)):
            if not row_ids:
                raise PromptError(f"prompt {i} is empty; the model needs at least one token to continue")
            if ctx is not None and len(row_ids) + p.max_new_tokens > ctx:
                raise PromptError(
                    f"prompt has {len(row_ids)} tokens; with max_new_tokens={p.max_new_tokens} "
                    f"it exceeds the model context of {ctx} tokens"
                )
            rows.append(_Row(index=i, prompt_ids=list(row_ids), params=p))
        return rows

    def _maybe_reseed(self, params: list[SamplingParams]) -> None:
        seed = next((p.seed for p in params if p.seed is not None), None)
        if seed is not None and seed != self._seed:
            self._generator.manual_seed(int(seed))
            self._seed = seed

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache,
        keep: torch.Tensor | None = None,
        model: PreTrainedModel | None = None,
    ) -> torch.Tensor:
        """Run ``model`` (default: the target); return float logits ``[batch, vocab]`` at column
        ``keep[b]`` (default: last)."""
        model = model or self.model
        kwargs = {}
        to_keep = self._logits_to_keep if model is self.model else self._spec_logits_to_keep
        if to_keep:
            kwargs["logits_to_keep"] = keep.view(-1, 1) if keep is not None else 1
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            **kwargs,
        )
        logits = out.logits
        if to_keep:
            return logits[:, -1, :].float()
        if keep is None:
            return logits[:, -1, :].float()
        return logits[torch.arange(logits.shape[0], device=logits.device), keep].float()

    def _forward_all(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """Run the target; return float logits at every fed column, ``[batch, width, vocab]``."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits.float()

    def _pick_tokens(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        if self.copy is not None:
            logits = torch.stack(
                [restrict_to_copies(logits[j], row.prompt_ids + row.generated, self.copy) for j, row in enumerate(rows)]
            )
        greedy = logits.argmax(dim=-1).tolist()
        picked = []
        for j, row in enumerate(rows):
            if row.params.temperature == 0:
                picked.append(int(greedy[j]))
            else:
                picked.append(sample_row(logits[j], row.params, self._generator))
        return picked

    def _decode_text(self, ids: list[int]) -> str:
        return hf_text.decode(self.tokenizer, ids)

    def _first_stop(self, row: _Row, stops: list[str], window: int) -> tuple[str, str] | None:
        """``(text up to the end of the earliest completed stop string, that string)``, or None.

        Only the last ``window`` tokens are decoded unless a stop string may have appeared.
        """
        tail = self._decode_text(row.generated[-window:])
        if not any(s in tail for s in stops):
            return None
        full = self._decode_text(row.generated)
        best_end, matched = None, None
        for s in stops:
            at = full.find(s)
            if at < 0:
                continue
            end = at + len(s)
            # earliest completed stop; for equal ends the longer (earlier-starting) one
            if best_end is None or end < best_end or (end == best_end and len(s) > len(matched)):
                best_end, matched = end, s
        return None if best_end is None else (full[:best_end], matched)

    def _advance(self, row: _Row, token: int, stops: list[str], window: int, started: float) -> bool:
        """Record a sampled token for ``row``; return True (and fill ``row.completion``) if it ended."""
        reason, matched, text_ = None, None, None
        if token in self._eos_ids:
            reason = "eos"
            row.fed_ids = row.prompt_ids + row.generated
        else:
            row.generated.append(token)
            row.fed_ids = None
            stopped = self._first_stop(row, stops, window) if stops else None
            if stopped is not None:
                reason, (text_, matched) = "stop", stopped
            if reason is None and len(row.generated) >= row.params.max_new_tokens:
                reason = "length"
            if reason is not None:
                row.fed_ids = row.prompt_ids + row.generated[:-1]
        if reason is None:
            return False
        if text_ is None:
            text_ = self._decode_text(row.generated)
        row.completion = Completion(
            text=text_,
            prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(row.generated),
            finish_reason=reason,
            matched_stop=matched,
            latency_s=time.perf_counter() - started,
        )
        return True

    # ---- the decode loop -----------------------------------------------------------------------

    def _decode(
        self,
        rows: list[_Row],
        stops: list[str],
        started: float,
        speculate: bool = False,
        drafter: PreTrainedModel | None = None,
        join: Callable[[int], list[RowRequest]] | None = None,
        stats: DecodeStats | None = None,
    ) -> list[RememberedRow]:
        """Prefill and decode every row; fill ``row.completion``; return the rows' KV for reuse
        (rows owned by a `RowRequest` are remembered and delivered as they end instead).

        Each iteration of the loop is one forward pass of the target over every batch position:
        without speculation it feeds each row's last token (`_plain_step`); with it (a
        `_verification_pass`) the last token plus the row's proposed tokens (see the module
        docstring). ``drafter`` is the speculation draft model (``draft`` method); its cache
        mirrors the target's column for column and shares ``mask``.
        """
        batch = self._prefill(rows, drafter)
        window = max([MIN_STOP_WINDOW] + [len(s.encode("utf-8")) + 2 for s in stops])
        remembered: list[RememberedRow] = []
        stats = stats if stats is not None else DecodeStats()
        while True:
            if join is not None and not speculate and not torch_waiting():
                # no new callers while another model's call waits for the torch thread: the loop drains first
                self._join(batch, join(len(batch.live())))
            next_token = self._commit(batch, stops, window, started, remembered)
            live = len(batch.live())
            if not live:
                return remembered
            stats.passes += 1
            stats.row_passes += live
            stats.peak_rows = max(stats.peak_rows, live)
            if batch.replan:
                next_token = self._replan(batch, next_token)
                if join is not None:
                    _crop_leading_columns(batch)  # rows that left may leave columns no live row uses
            if speculate:
                self._verification_pass(batch, next_token, drafter)
            else:
                self._plain_step(batch, next_token)

    def _join(self, batch: _Batch, requests: list[RowRequest]) -> None:
        """Prefill ``requests``' rows and append them to the running batch (first tokens in ``emitted``)."""
        if not requests:
            return
        started = time.perf_counter()
        rows = [row for request in requests for row in self._request_rows(request, started)]
        if not rows:
            return
        new = self._prefill(rows, None)
        old_len, new_len = batch.mask.shape[1], new.mask.shape[1]
        _left_pad(batch, new_len - old_len)
        _left_pad(new, old_len - new_len)
        for layer, joined in zip(batch.cache.layers, new.cache.layers, strict=True):
            layer.keys = torch.cat([layer.keys, joined.keys], dim=0)
            layer.values = torch.cat([layer.values, joined.values], dim=0)
        batch.mask = torch.cat([batch.mask, new.mask], dim=0)
        batch.next_pos = torch.cat([batch.next_pos, new.next_pos], dim=0)
        batch.slots.extend(new.slots)
        batch.emitted.extend(new.emitted)
        batch.accepted.extend(new.accepted)
        batch.replan = True

    def _commit(
        self, batch: _Batch, stops: list[str], window: int, started: float, remembered: list[RememberedRow]
    ) -> list[int]:
        """Hand each position's emitted tokens to its row; finished rows leave the batch (their KV
        captured for the prefix cache). Returns the token each position feeds next (pad: none)."""
        next_token = [self._pad_id] * len(batch.slots)
        for j, row in enumerate(batch.slots):
            if row is None:
                continue
            for n, token in enumerate(batch.emitted[j], start=1):
                if self._advance(row, token, stops, window, row.started or started):
                    batch.replan = True
                    row.spec_accepted += min(n, batch.accepted[j])
                    row.completion.cached_tokens = row.cached
                    row.completion.spec_draft_tokens = row.spec_proposed
                    row.completion.spec_accepted_tokens = row.spec_accepted
                    row.completion.spec_verify_passes = row.spec_passes
                    if self.remembered.enabled:
                        # accepted tokens after the one that ended the row are in the cache too
                        extra = batch.accepted[j] - (n - 1)
                        captured = capture_row(batch.cache, batch.draft_cache, batch.mask, j, row.fed_ids, extra)
                        if row.owner is None:
                            remembered.append(captured)
                        else:
                            self.remembered.remember([captured])  # its caller's next step starts from it
                    batch.slots[j] = None
                    if row.owner is not None:
                        row.owner.left -= 1
                        if not row.owner.left:
                            row.owner.deliver([r.completion for r in row.owner.rows])
                    break
            else:
                row.spec_accepted += batch.accepted[j]
                next_token[j] = batch.emitted[j][-1]
        return next_token

    def _plan_batch(self, live: list[int], current: int) -> list[int]:
        """Batch positions to keep for the next decode steps (`plan_batch` on this engine's curve)."""
        return plan_batch(live, current, self._costs)

    def _replan(self, batch: _Batch, next_token: list[int]) -> list[int]:
        """Resize the batch after rows ended (`_plan_batch`); returns ``next_token`` for the new positions."""
        index = self._plan_batch(batch.live(), len(batch.slots))
        if index != list(range(len(batch.slots))):
            select = torch.tensor(index, dtype=torch.long, device=self.device)
            batch.cache.batch_select_indices(select)
            if batch.draft_cache is not None:
                batch.draft_cache.batch_select_indices(select)
            batch.mask = batch.mask[select]
            batch.next_pos = batch.next_pos[select]
            # a position that repeats an earlier one is a filler: decoded, never read
            batch.slots = [batch.slots[j] if index.index(j) == k else None for k, j in enumerate(index)]
            next_token = [next_token[j] if batch.slots[k] is not None else self._pad_id for k, j in enumerate(index)]
        batch.replan = False
        return next_token

    def _plain_step(self, batch: _Batch, next_token: list[int]) -> None:
        """One decode step without speculation: every position feeds its next token."""
        device = self.device
        live = batch.live()
        n_slots = len(batch.slots)
        step = torch.tensor(next_token, dtype=torch.long, device=device).unsqueeze(1)
        batch.mask = torch.cat([batch.mask, torch.ones((n_slots, 1), dtype=torch.long, device=device)], dim=1)
        logits = self._forward(step, batch.mask, batch.next_pos.unsqueeze(1), batch.cache)
        batch.next_pos = batch.next_pos + 1
        batch.emitted = [[] for _ in batch.slots]
        for j, token in zip(live, self._pick_tokens(logits[live], [batch.slots[j] for j in live]), strict=False):
            batch.emitted[j] = [token]
        batch.accepted = [0] * n_slots

    # ---- prefill -------------------------------------------------------------------------------

    def _prefill(self, rows: list[_Row], drafter: PreTrainedModel | None) -> _Batch:
        """Prefill every row in the cheaper of two layouts and pick each row's first token.

        Two prefill layouts; take the one that feeds fewer prompt tokens (pads count: they are
        computed too), the shared one on a tie (it copies less KV):
        - shared: the rows' common prefix minus what is remembered of it, once at batch size 1,
          then batch x the longest suffix after the common prefix (one problem's round);
        - per row: batch x the longest suffix after each row's OWN longest remembered prefix
          (rows of different problems merged into one call share only the chat template).
        """
        n_rows = len(rows)
        prompt_lens = [len(r.prompt_ids) for r in rows]
        # Shared prefix: leave at least one token of every row outside it, for that row's logits.
        lcp = len(rows[0].prompt_ids)
        for r in rows[1:]:
            lcp = common_prefix_len(rows[0].prompt_ids[:lcp], r.prompt_ids)
        lcp = min(lcp, min(prompt_lens) - 1)
        _, shared_reused = self.remembered.best_entry(rows[0].prompt_ids[:lcp])
        hits = [
            self.remembered.best_entry(r.prompt_ids, n - 1, prefer_draft=drafter is not None)
            for r, n in zip(rows, prompt_lens, strict=False)
        ]
        shared_cost = (lcp - shared_reused) + n_rows * max(n - lcp for n in prompt_lens)
        per_row_cost = n_rows * max(n - hit for n, (_, hit) in zip(prompt_lens, hits, strict=False))
        if per_row_cost < shared_cost:
            cache, draft_cache, mask, logits = self._prefill_per_row(rows, hits, drafter)
        else:
            cache, draft_cache, mask, logits = self._prefill_with_shared(rows, lcp, drafter)
        return _Batch(
            slots=list(rows),
            cache=cache,
            draft_cache=draft_cache,
            mask=mask,
            next_pos=torch.tensor(prompt_lens, dtype=torch.long, device=self.device),
            emitted=[[t] for t in self._pick_tokens(logits, rows)],
            accepted=[0] * n_rows,
        )

    def _prefill_with_shared(
        self, rows: list[_Row], lcp: int, drafter: PreTrainedModel | None
    ) -> tuple[DynamicCache, DynamicCache | None, torch.Tensor, torch.Tensor]:
        """Prefill in the shared-prefix layout ``[shared][suffix_i][pads]``.

        The first ``lcp`` prompt tokens (common to every row) come from the prefix cache or are
        fed once at batch size 1, then copied to every row; each row's suffix follows,
        right-padded, with positions counting real tokens only. Returns the target cache, the
        draft cache (None without ``drafter``), the attention mask and the logits of each row's
        last prompt token.
        """
        device = self.device
        n_rows = len(rows)
        shared = rows[0].prompt_ids[:lcp]
        cache, reused = self.remembered.reused_cache(self.model, shared)
        self._prefill_shared(self.model, cache, shared, reused)
        for r in rows:
            r.cached = reused
        draft_cache = None
        if drafter is not None:
            draft_cache, draft_reused = self.remembered.reused_cache(drafter, shared, draft=True)
            self._prefill_shared(drafter, draft_cache, shared, draft_reused)
        if n_rows > 1:
            cache.batch_repeat_interleave(n_rows)
            if draft_cache is not None:
                draft_cache.batch_repeat_interleave(n_rows)

        suffix_lens = [len(r.prompt_ids) - lcp for r in rows]
        width = max(suffix_lens)
        input_ids = torch.full((n_rows, width), self._pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((n_rows, lcp + width), dtype=torch.long, device=device)
        mask[:, :lcp] = 1
        positions = torch.full((n_rows, width), lcp, dtype=torch.long, device=device)
        for b, (r, s) in enumerate(zip(rows, suffix_lens, strict=False)):
            input_ids[b, :s] = torch.tensor(r.prompt_ids[lcp:], dtype=torch.long, device=device)
            mask[b, lcp : lcp + s] = 1
            positions[b, :s] = torch.arange(lcp, lcp + s, device=device)
        logits = self._feed_suffixes(input_ids, mask, positions, suffix_lens, (cache, draft_cache), drafter)
        return cache, draft_cache, mask, logits

    def _prefill_per_row(
        self, rows: list[_Row], hits: list[tuple[RememberedRow | None, int]], drafter: PreTrainedModel | None
    ) -> tuple[DynamicCache, DynamicCache | None, torch.Tensor, torch.Tensor]:
        """Prefill in the per-row layout ``[pads][cached_i][suffix_i][pads]``.

        ``hits[b]`` is row b's remembered row and the length L_b of the prefix it shares (at most
        the prompt minus one token, whose logits the row needs). The cached region is left-padded
        to max L_b: row b's remembered keys/values, zeros under mask 0 before them. Keys carry
        their rotary positions already, so only the mask and the suffix tokens' positions
        (L_b + 0, 1, ...) must be right. Only the suffixes are fed, right-padded as in the shared
        layout; no query position is fully masked (each sees itself). The draft cache mirrors the
        layout (`_draft_prefix_cache`). Returns what `_prefill_with_shared` returns.
        """
        device = self.device
        n_rows = len(rows)
        lengths = [n for _, n in hits]
        head = max(lengths)
        self.remembered.touch([entry for entry, _ in hits])
        kv = [(entry.keys, entry.values) if entry is not None else None for entry, _ in hits]
        cache = left_padded_cache(self.model, kv, lengths, head)
        draft_cache = self._draft_prefix_cache(rows, hits, drafter, head) if drafter is not None else None

        suffix_lens = [len(r.prompt_ids) - n for r, n in zip(rows, lengths, strict=False)]
        width = max(suffix_lens)
        input_ids = torch.full((n_rows, width), self._pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((n_rows, head + width), dtype=torch.long, device=device)
        positions = torch.zeros((n_rows, width), dtype=torch.long, device=device)
        for b, (r, n, s) in enumerate(zip(rows, lengths, suffix_lens, strict=False)):
            r.cached = n
            input_ids[b, :s] = torch.tensor(r.prompt_ids[n:], dtype=torch.long, device=device)
            mask[b, head - n : head + s] = 1
            positions[b, :] = n + s - 1  # pads repeat the last real position (masked anyway)
            positions[b, :s] = torch.arange(n, n + s, device=device)
        logits = self._feed_suffixes(input_ids, mask, positions, suffix_lens, (cache, draft_cache), drafter)
        return cache, draft_cache, mask, logits

    def _feed_suffixes(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        suffix_lens: list[int],
        caches: tuple[DynamicCache, DynamicCache | None],
        drafter: PreTrainedModel | None,
    ) -> torch.Tensor:
        """Feed the rows' right-padded prompt suffixes into the target's cache and the draft's
        mirror (``caches``); return the target's logits at each row's last prompt token."""
        cache, draft_cache = caches
        last = torch.tensor([s - 1 for s in suffix_lens], dtype=torch.long, device=self.device)
        logits = self._forward(input_ids, mask, positions, cache, keep=last)
        if draft_cache is not None:
            self._forward(input_ids, mask, positions, draft_cache, keep=last, model=drafter)  # its KV only
        return logits

    def _draft_prefix_cache(
        self, rows: list[_Row], hits: list[tuple[RememberedRow | None, int]], drafter: PreTrainedModel, head: int
    ) -> DynamicCache:
        """The draft's mirror of the per-row layout's cached region: each row's remembered draft KV,
        or (a row whose remembered row kept none) its draft prefix computed at batch size 1."""
        draft_kv = []
        for r, (entry, n) in zip(rows, hits, strict=False):
            if entry is not None and entry.draft_keys is not None:
                draft_kv.append((entry.draft_keys, entry.draft_values))
            elif n:
                alone = DynamicCache(config=drafter.config)
                self._prefill_shared(drafter, alone, r.prompt_ids[:n], 0)
                draft_kv.append(([layer.keys for layer in alone.layers], [layer.values for layer in alone.layers]))
            else:
                draft_kv.append(None)
        return left_padded_cache(drafter, draft_kv, [n for _, n in hits], head)

    def _prefill_shared(self, model: PreTrainedModel, cache: DynamicCache, shared: list[int], reused: int) -> None:
        """Feed ``shared[reused:]`` at batch size 1 into ``cache`` (which holds ``shared[:reused]``)."""
        if len(shared) <= reused:
            return
        device = self.device
        chunk = torch.tensor([shared[reused:]], dtype=torch.long, device=device)
        self._forward(
            chunk,
            torch.ones((1, len(shared)), dtype=torch.long, device=device),
            torch.arange(reused, len(shared), device=device).unsqueeze(0),
            cache,
            model=model,
        )

    # ---- the verification pass (token-level speculation) ----------------------------------------

    def _verification_pass(self, batch: _Batch, next_token: list[int], drafter: PreTrainedModel | None) -> None:
        """Propose, score every row's [last token + proposals] in one target pass, accept.

        Updates the batch: its mask and positions, the tokens each position committed
        (``emitted``) and how many of them were accepted proposals (``accepted``).
        """
        spec = self.speculation
        slots = batch.slots
        # proposals never run past a row's token cap: the last allowed token is the target's own
        caps = [0] * len(slots)
        for j in batch.live():
            row = slots[j]
            caps[j] = max(0, min(spec.num_tokens, row.params.max_new_tokens - len(row.generated) - 1))
        base = batch.mask.shape[1]  # cache column of each row's last committed token
        draft_probs: list[list[torch.Tensor]] = [[] for _ in slots]
        if drafter is None:
            proposals = [[] for _ in slots]
            for j in batch.live():
                row = slots[j]
                proposals[j] = ngram_propose(row.prompt_ids + row.generated, caps[j], spec.max_ngram, spec.min_ngram)
            lengths = [len(p) for p in proposals]
        else:
            lengths = caps
        width = 1 + max(lengths)
        positions = self._open_columns(batch, lengths, width)
        if drafter is not None:
            proposals, draft_probs = self._draft_propose(
                drafter, batch.draft_cache, slots, next_token, caps, batch.mask, base, positions
            )
        logits = self._score(batch, next_token, proposals, width, positions)
        self._accept(batch, logits, proposals, draft_probs if drafter is not None else None, base, width)
        self._crop_unused_columns(batch)

    def _open_columns(self, batch: _Batch, lengths: list[int], width: int) -> torch.Tensor:
        """Add this pass's ``width`` cache columns to the mask (a row's last token plus its
        ``lengths[j]`` proposals are real); return their positions, ``[positions, width]``."""
        device = self.device
        new_cols = torch.zeros((len(batch.slots), width), dtype=torch.long, device=device)
        for j in range(len(batch.slots)):
            new_cols[j, : 1 + lengths[j]] = 1  # fillers: their last token only
        batch.mask = torch.cat([batch.mask, new_cols], dim=1)
        # real columns count on from the row's position; pad columns repeat its last real one
        # (masked anyway, and never beyond the context a model with learned positions holds)
        offsets = torch.arange(width, device=device).unsqueeze(0)
        limits = torch.tensor(lengths, dtype=torch.long, device=device).unsqueeze(1)
        return batch.next_pos.unsqueeze(1) + torch.minimum(offsets, limits)

    def _score(
        self, batch: _Batch, next_token: list[int], proposals: list[list[int]], width: int, positions: torch.Tensor
    ) -> torch.Tensor:
        """The target's logits at every fed column, ``[positions, width, vocab]`` (copy-restricted
        where copying is on: every scored position picks as plain decoding would there)."""
        device = self.device
        live = batch.live()
        step = torch.full((len(batch.slots), width), self._pad_id, dtype=torch.long, device=device)
        step[:, 0] = torch.tensor(next_token, dtype=torch.long, device=device)
        for j in live:
            if proposals[j]:
                step[j, 1 : 1 + len(proposals[j])] = torch.tensor(proposals[j], dtype=torch.long, device=device)
        if width == 1:
            logits = self._forward(step, batch.mask, positions, batch.cache).unsqueeze(1)
        else:
            logits = self._forward_all(step, batch.mask, positions, batch.cache)
        if self.copy is not None:
            for j in live:
                context = batch.slots[j].prompt_ids + batch.slots[j].generated  # ends with next_token[j]
                for i in range(len(proposals[j]) + 1):
                    logits[j, i] = restrict_to_copies(logits[j, i], context + proposals[j][:i], self.copy)
        return logits

    def _accept(
        self,
        batch: _Batch,
        logits: torch.Tensor,
        proposals: list[list[int]],
        draft_probs: list[list[torch.Tensor]] | None,
        base: int,
        width: int,
    ) -> None:
        """Accept each row's longest agreeing run (greedy) or rejection-sample it (sampled rows);
        rejected columns become masked holes. ``draft_probs`` is None for n-gram proposals."""
        n_slots = len(batch.slots)
        live = batch.live()
        emitted: list[list[int]] = [[] for _ in batch.slots]
        accepted = [0] * n_slots
        advance = [1] * n_slots
        greedy_rows = [j for j in live if batch.slots[j].params.temperature == 0]
        argmax = logits[greedy_rows].argmax(dim=-1).tolist() if greedy_rows else []
        for j in live:
            row, proposal = batch.slots[j], proposals[j]
            k = len(proposal)
            if row.params.temperature == 0:
                a, token = greedy_accept(argmax[greedy_rows.index(j)][: k + 1], proposal)
            else:
                target_probs = torch.stack([sampling_probs(logits[j, i], row.params) for i in range(k + 1)])
                q = torch.stack(draft_probs[j]) if draft_probs is not None and k else None
                a, token = accept_or_resample(target_probs, proposal, q, self._generator)
            emitted[j] = proposal[:a] + [token]
            accepted[j] = a
            advance[j] = a + 1
            batch.mask[j, base + 1 + a : base + width] = 0  # rejected proposals: holes from now on
            row.spec_proposed += k
            row.spec_passes += 1
        batch.next_pos = batch.next_pos + torch.tensor(advance, dtype=torch.long, device=self.device)
        batch.emitted, batch.accepted = emitted, accepted

    @staticmethod
    def _crop_unused_columns(batch: _Batch) -> None:
        """Crop columns that no row uses any more (rejected proposals of every row at the end)."""
        used = int(batch.mask.any(dim=0).nonzero().max()) + 1
        if used < batch.mask.shape[1]:
            batch.mask = batch.mask[:, :used]
            layers = batch.cache.layers + (batch.draft_cache.layers if batch.draft_cache is not None else [])
            for layer in layers:
                layer.keys = layer.keys[:, :, :used, :]
                layer.values = layer.values[:, :, :used, :]

    def _draft_propose(
        self,
        drafter: PreTrainedModel,
        draft_cache: DynamicCache,
        slots: list[_Row | None],
        next_token: list[int],
        lengths: list[int],
        mask: torch.Tensor,
        base: int,
        positions: torch.Tensor,
    ) -> tuple[list[list[int]], list[list[torch.Tensor]]]:
        """``lengths[j]`` tokens per position from the draft model, one batched forward per column.

        ``mask`` and ``positions`` (``[batch, K + 1]``) already hold this pass's columns (the mask
        from column ``base``). The draft also feeds its last proposal (K + 1 forwards for K
        proposals), so its cache keeps every column the target's has. Greedy rows take the
        draft's argmax; sampled rows sample from the draft's distribution q (same processing as
        the row's target sampling) and keep q for `accept_or_resample`.
        """
        device = self.device
        vocab = output_vocab_size(self.model)
        proposals: list[list[int]] = [[] for _ in slots]
        draft_probs: list[list[torch.Tensor]] = [[] for _ in slots]
        column = list(next_token)
        for i in range(max(lengths) + 1):
            logits = self._forward(
                torch.tensor(column, dtype=torch.long, device=device).unsqueeze(1),
                mask[:, : base + i + 1],
                positions[:, i : i + 1],
                draft_cache,
                model=drafter,
            )
            if i == max(lengths):
                break
            logits = fit_vocab(logits, vocab)  # never propose a token the target cannot score
            column = [self._pad_id] * len(slots)
            for j, row in enumerate(slots):
                if row is None or lengths[j] <= i:
                    continue
                if row.params.temperature == 0:
                    token = int(logits[j].argmax())
                else:
                    q = sampling_probs(logits[j], row.params)
                    token = int(torch.multinomial(q, 1, generator=self._generator).item())
                    draft_probs[j].append(q)
                proposals[j].append(token)
                column[j] = token
        return proposals, draft_probs


def _crop_leading_columns(batch: _Batch) -> None:
    """Drop the leading cache columns that every position masks: under steady joining a loop runs
    on while rows come and go, and without this its cache would keep the columns of rows long gone."""
    used = batch.mask.any(dim=0).nonzero()
    first = int(used.min()) if used.numel() else 0
    if first > 0:
        batch.mask = batch.mask[:, first:]
        for layer in batch.cache.layers:
            layer.keys = layer.keys[:, :, first:, :]
            layer.values = layer.values[:, :, first:, :]


def _left_pad(batch: _Batch, columns: int) -> None:
    """Prepend ``columns`` masked cache columns to every position of ``batch`` (no-op for <= 0):
    keys carry their rotary positions already, so only the mask must say the columns are empty."""
    if columns <= 0:
        return

    def padded(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.new_zeros((t.shape[0], t.shape[1], columns, t.shape[3])), t], dim=2)

    for layer in batch.cache.layers:
        layer.keys, layer.values = padded(layer.keys), padded(layer.values)
    batch.mask = torch.cat([batch.mask.new_zeros((batch.mask.shape[0], columns)), batch.mask], dim=1)
