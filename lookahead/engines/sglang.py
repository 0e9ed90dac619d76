"""SGLang engine: the target, draft (or judge) runs in an SGLang server, or in this process.

Why SGLang: the γ+1 target rows of a round share the committed prefix, and SGLang's radix cache
reuses that prefix's KV cache across rows and rounds (``Completion.cached_tokens``); the server can
also run token-level speculative decoding (EAGLE3, NGRAM, STANDALONE) inside every step, which is
the ``lr+sd`` setting of the paper.

Two modes, chosen by ``EngineConfig.url``:

- **server** (``url`` set): one ``POST /generate`` per `generate` call with the whole batch
  (``text`` list + one ``sampling_params`` dict per row, so rows may differ in
  ``max_new_tokens``). Start servers with ``scripts/launch_sglang.py --preset gpu-qwen3-32b``.
- **in-process** (``url`` None): ``sglang.Engine(model_path=model, **server_args)`` imported
  lazily (extra ``[sglang]``, needs CUDA); ``Engine.generate(prompt=[...], sampling_params=[...])``
  returns the same dicts as the server.

``EngineConfig.options`` holds SGLang server arguments (``tp_size``, ``mem_fraction_static``,
``speculative_algorithm``, ...; `ServerArgs` field names) for the in-process engine and the
launcher, plus the client keys of `lookahead.engines.http.CLIENT_OPTIONS` (``tokenizer``,
``retry_backoff_s``, ``max_concurrency``). Token-level speculation is a server setting in SGLang:
``generate(speculate=...)`` cannot switch it per call and is ignored.

Request/response mapping (SGLang docs ``basic_usage/sampling_params.md``, ``native_api``;
``tokenizer_manager.py``):

- ``sampling_params``: ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k`` (-1 = off),
  ``stop``, ``no_stop_trim: true`` so the matched delimiter stays in the text (the loop needs it).
  ``SamplingParams.seed`` is not sent (SGLang seeds per server, ``--random-seed``).
- ``meta_info.finish_reason``: ``{"type": "stop", "matched": "\\n\\n"}`` -> ``"stop"`` (text cut
  right after the first occurrence of the matched string, so it ends on the delimiter even when
  the last token ran past it); ``{"type": "stop", "matched": <token id>}`` -> ``"eos"``;
  ``{"type": "length", ...}`` -> ``"length"``; ``{"type": "abort", "message": ...}`` raises.
- ``meta_info``: ``prompt_tokens``, ``completion_tokens``, ``cached_tokens``.
- **Token-level speculation counts**: newer SGLang reports ``spec_draft_token_num`` and
  ``spec_accept_token_num`` per request; those map directly to ``Completion.spec_draft_tokens`` /
  ``spec_accepted_tokens``. Older servers only report ``spec_verify_ct`` (verification forward
  passes). Each pass commits its accepted draft tokens plus one token of the target's own, which
  is why SGLang's accept length is ``completion_tokens / spec_verify_ct``; so
  ``spec_accepted_tokens = completion_tokens - spec_verify_ct`` and ``spec_draft_tokens =
  spec_verify_ct * (speculative_num_draft_tokens - 1)`` (the tokens proposed per pass, as SGLang
  counts them), with ``speculative_num_draft_tokens`` from ``options`` or ``/get_server_info``.
  When it is unknown both fields stay 0 (a warning says so).
- `next_token_logprobs`: ``return_logprob``, ``token_ids_logprob`` (the candidates' first token
  ids), ``max_new_tokens: 1``; read ``meta_info.output_token_ids_logprobs[0]`` = ``[[logprob,
  token_id, text], ...]``. Exact values for every candidate, no top-k cut.
- ``context_length``: ``/v1/models`` ``data[0].max_model_len`` (SGLang's ``model_config.context_len``),
  else the local tokenizer's config.

Tokenization (`count_tokens`, `format_chat`): a transformers tokenizer from ``options.tokenizer``,
the model name, or the ``tokenizer_path`` / ``model_path`` of ``/get_model_info`` (works when the
server runs on this machine); else the server's ``/tokenize`` (counts only, no chat rendering).

Example:
    >>> from lookahead.config import EngineConfig, SamplingParams
    >>> engine = SGLangEngine.from_config(EngineConfig(backend="sglang", model="Qwen/Qwen3-1.7B",
    ...                                                url="http://127.0.0.1:30001"))  # doctest: +SKIP
    >>> engine.generate(["Q: 2+2?\\nA:"], SamplingParams(max_new_tokens=32), stop=["\\n\\n"])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from lookahead.config import EngineConfig, SamplingParams
from lookahead.engines.http import (
    HTTPClient,
    RemoteTokenizer,
    RequestRejected,
    ServerUnavailable,
    client_options,
    load_tokenizer,
    server_args,
)
from lookahead.engines.remote import (
    RemoteEngine,
    as_int,
    closed_on_error,
    connect_tokenizer,
    open_client,
    prepare_batch,
    tokenizer_context,
)
from lookahead.errors import ConfigError, LookaheadError, ModelLoadError
from lookahead.types import Completion

logger = logging.getLogger(__name__)

LAUNCH_HINT = "start it with: python scripts/launch_sglang.py --preset gpu-qwen3-32b (or fix the engine's url)"
INSTALL_HINT = 'pip install "lookahead[sglang]"'


def cut_after_stop(text: str, matched: str) -> str:
    """``text`` up to and including the first ``matched`` (appended if the server trimmed it)."""
    at = text.find(matched)
    return text[: at + len(matched)] if at >= 0 else text + matched


class _ServerBackend:
    """``/generate`` over HTTP."""

    def __init__(self, client: HTTPClient) -> None:
        self.client = client

    def generate(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        out = self.client.post("/generate", payload)
        return out if isinstance(out, list) else [out]

    def server_info(self) -> dict[str, Any]:
        return self.client.get("/get_server_info")

    def flush_cache(self) -> bool:
        """``POST /flush_cache`` (the radix cache); the server refuses it (400) while requests run."""
        try:
            self.client.post("/flush_cache", {})
        except (RequestRejected, ServerUnavailable):
            return False
        return True

    def close(self) -> None:
        self.client.close()


class _InProcessBackend:
    """``sglang.Engine`` in this process (same request and answer dicts as the server)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def generate(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        kwargs = {k: v for k, v in payload.items() if k != "text"}
        out = self.engine.generate(prompt=payload["text"], **kwargs)
        return out if isinstance(out, list) else [out]

    def server_info(self) -> dict[str, Any]:
        return dict(self.engine.get_server_info())

    def flush_cache(self) -> bool:
        flush = getattr(self.engine, "flush_cache", None)
        if flush is None:
            return False
        out = flush()
        return bool(getattr(out, "success", True))

    def close(self) -> None:
        self.engine.shutdown()


class SGLangEngine(RemoteEngine[_ServerBackend | _InProcessBackend]):
    """`Engine` over an SGLang server or an in-process ``sglang.Engine`` (see the module docstring)."""

    def __init__(
        self,
        backend: _ServerBackend | _InProcessBackend,
        tokenizer: RemoteTokenizer,
        name: str,
        context: int | None = None,
        num_draft_tokens: int | None = None,
    ) -> None:
        super().__init__(backend, tokenizer, name, context)
        # speculative_num_draft_tokens of the server (tokens per verify pass, incl. the target's);
        # None = not asked yet, 0 = unknown / no speculation
        self.num_draft_tokens = num_draft_tokens
        self._warned_spec = False

    @property
    def backend(self) -> _ServerBackend | _InProcessBackend | None:
        """The server or in-process backend; None after `shutdown`."""
        return self._connection

    @property
    def thread_safe(self) -> bool:
        """May `generate` be called from several threads at once? Over a server, yes: each call is
        a stateless HTTP request and the server batches concurrent ones (continuous batching),
        which is what pipelined rounds and ``concurrency > 1`` rely on. In process, no."""
        return isinstance(self._connection, _ServerBackend)

    def clear_prefix_cache(self) -> bool:
        """Flush the server's radix cache (SGLang's ``/flush_cache``; refused while requests run)."""
        backend = self._connection
        return backend.flush_cache() if backend is not None else False

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: EngineConfig) -> SGLangEngine:
        opts = client_options(cfg.options)
        args = server_args(cfg.options)
        spec_tokens = args.get("speculative_num_draft_tokens")
        if cfg.url:
            return cls._connect(cfg, opts, spec_tokens)
        return cls._start_in_process(cfg, opts, args, spec_tokens)

    @classmethod
    def _connect(cls, cfg: EngineConfig, opts: dict[str, Any], spec_tokens: Any) -> SGLangEngine:
        client = open_client(cfg, opts, base_url=cfg.url or "", server="SGLang", hint=LAUNCH_HINT)
        with closed_on_error(client):
            info = client.get("/get_model_info")
            served = str(info.get("model_path") or cfg.model)
            tokenizer = connect_tokenizer(opts, client, [cfg.model, info.get("tokenizer_path"), served], served)
            context = cls._server_context(client) or tokenizer_context(tokenizer.local)
        name = f"sglang:{served.rstrip('/').split('/')[-1]}"
        return cls(_ServerBackend(client), tokenizer, name, context, as_int(spec_tokens))

    @staticmethod
    def _server_context(client: HTTPClient) -> int | None:
        try:
            models = client.get("/v1/models")
        except LookaheadError as exc:
            logger.info("no context length from %s/v1/models: %s", client.base_url, exc)
            return None
        data = models.get("data") if isinstance(models, dict) else None
        if data and isinstance(data[0], dict) and data[0].get("max_model_len"):
            return int(data[0]["max_model_len"])
        return None

    @classmethod
    def _start_in_process(
        cls, cfg: EngineConfig, opts: dict[str, Any], args: dict[str, Any], spec_tokens: Any
    ) -> SGLangEngine:
        _require_local_sglang()
        import sglang

        try:
            runtime = sglang.Engine(model_path=cfg.model, **args)
        except TypeError as exc:
            raise ConfigError(f"an options key is not an sglang.Engine argument: {exc}") from None
        local = load_tokenizer(opts, [])
        manager = getattr(runtime, "tokenizer_manager", None)  # sglang's internals, not our Engine protocol
        hf_tok = local[0] if local else getattr(manager, "tokenizer", None)
        if hf_tok is None:
            runtime.shutdown()
            raise ModelLoadError(f"SGLang loaded {cfg.model} without a tokenizer; set options.tokenizer")
        context = getattr(getattr(manager, "model_config", None), "context_len", None) or tokenizer_context(hf_tok)
        tokenizer = RemoteTokenizer(hf_tok, None, model=cfg.model, source=local[1] if local else cfg.model)
        name = f"sglang:{cfg.model.rstrip('/').split('/')[-1]}"
        return cls(_InProcessBackend(runtime), tokenizer, name, int(context) if context else None,
                   as_int(spec_tokens) or as_int(args.get("speculative_num_draft_tokens")))

    # -- Engine protocol -----------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams | Sequence[SamplingParams],
        stop: Sequence[str] = (),
        speculate: bool = False,
    ) -> list[Completion]:
        started, prompts, per_row, stops = prepare_batch(prompts, params, stop)
        if not prompts:
            return []
        payload = {"text": prompts, "sampling_params": [self._sampling(p, stops) for p in per_row]}
        outputs = self._open().generate(payload)
        if len(outputs) != len(prompts):
            raise ServerUnavailable(f"SGLang answered {len(outputs)} rows for {len(prompts)} prompts")
        elapsed = time.perf_counter() - started
        return [self._completion(out, elapsed) for out in outputs]

    def next_token_logprobs(
        self, prompts: Sequence[str], candidates: Sequence[str], *, max_batch: int = 16
    ) -> list[dict[str, float]]:
        """Log-probability of each candidate's first token as the token right after each prompt.

        Exact for every candidate (SGLang ``token_ids_logprob``). Candidates are tokenized on
        their own, so give them as they would follow the prompt (e.g. ``" Yes"`` after a space-less
        prompt end). Returns one ``{candidate: logprob}`` per prompt, in input order. All prompts
        go in one request (the server batches them; ``max_batch`` is not used).
        """
        prompts, candidates = list(prompts), list(candidates)
        if not prompts:
            return []
        first_ids = [self.tokenizer.first_token(c)[0] for c in candidates]
        unique_ids = sorted(set(first_ids))
        payload = {
            "text": prompts,
            "sampling_params": [{"max_new_tokens": 1, "temperature": 0.0} for _ in prompts],
            "return_logprob": True,
            "token_ids_logprob": [unique_ids for _ in prompts],
        }
        outputs = self._open().generate(payload)
        result = []
        for out in outputs:
            entries = (out.get("meta_info", {}).get("output_token_ids_logprobs") or [None])[0] or []
            by_id = {int(entry[1]): float(entry[0]) for entry in entries}
            result.append({c: by_id.get(tid, -math.inf) for c, tid in zip(candidates, first_ids, strict=False)})
        return result

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _sampling(p: SamplingParams, stops: list[str]) -> dict[str, Any]:
        sampling: dict[str, Any] = {
            "max_new_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k if p.top_k > 0 else -1,
            "no_stop_trim": True,
        }
        if stops:
            sampling["stop"] = stops
        return sampling

    def _completion(self, out: dict[str, Any], elapsed: float) -> Completion:
        meta = out.get("meta_info") or {}
        text = str(out.get("text", ""))
        reason = meta.get("finish_reason") or {}
        kind = reason.get("type") if isinstance(reason, dict) else reason
        matched = reason.get("matched") if isinstance(reason, dict) else None
        matched_stop = None
        if kind == "stop" and isinstance(matched, str) and matched:
            finish, matched_stop, text = "stop", matched, cut_after_stop(text, matched)
        elif kind == "stop":
            finish = "eos"  # matched an EOS / stop token id (not part of the text)
        elif kind == "length":
            finish = "length"
        elif kind == "abort":
            raise ServerUnavailable(f"SGLang aborted the request: {reason.get('message') or reason}")
        else:
            raise ServerUnavailable(f"SGLang returned an unfinished row (finish_reason {reason!r})")
        completion_tokens = int(meta.get("completion_tokens", 0))
        drafted, accepted = self._spec_counts(meta, completion_tokens)
        return Completion(
            text=text,
            prompt_tokens=int(meta.get("prompt_tokens", 0)),
            completion_tokens=completion_tokens,
            finish_reason=finish,  # type: ignore[arg-type]
            matched_stop=matched_stop,
            latency_s=float(meta.get("e2e_latency") or elapsed),
            cached_tokens=int(meta.get("cached_tokens") or 0),
            spec_draft_tokens=drafted,
            spec_accepted_tokens=accepted,
        )

    def _spec_counts(self, meta: dict[str, Any], completion_tokens: int) -> tuple[int, int]:
        """(proposed, accepted) draft tokens of token-level speculation; mapping in the module doc."""
        if meta.get("spec_draft_token_num") is not None and meta.get("spec_accept_token_num") is not None:
            return int(meta["spec_draft_token_num"]), int(meta["spec_accept_token_num"])
        verify = int(meta.get("spec_verify_ct") or 0)
        if verify <= 0:
            return 0, 0
        per_pass = self._draft_tokens_per_pass()
        if not per_pass:
            return 0, 0
        return verify * per_pass, max(completion_tokens - verify, 0)

    def _draft_tokens_per_pass(self) -> int:
        if self.num_draft_tokens is None:
            try:
                info = self._open().server_info()
            except LookaheadError as exc:
                logger.info("no server info for the speculation counts: %s", exc)
                info = {}
            self.num_draft_tokens = as_int(info.get("speculative_num_draft_tokens")) or 0
        if self.num_draft_tokens <= 1:
            if not self._warned_spec:
                logger.warning(
                    "SGLang reports spec_verify_ct but %s cannot tell how many tokens it drafts per pass; set "
                    "options.speculative_num_draft_tokens to fill Completion.spec_draft_tokens", self.name
                )
                self._warned_spec = True
            return 0
        return self.num_draft_tokens - 1


def _require_local_sglang() -> None:
    """The in-process engine needs the sglang package and a CUDA GPU; say how to get either."""
    if importlib.util.find_spec("sglang") is None:
        raise ModelLoadError(
            f"the sglang backend without a url runs SGLang in this process and needs the package sglang: "
            f"{INSTALL_HINT} (on a CUDA machine), or set url to a running server"
        )
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        raise ModelLoadError(
            "the in-process SGLang engine needs a CUDA GPU; set url to a remote SGLang server instead"
        )
