"""OpenAI-compatible engine: any ``/v1/completions`` server (vLLM, SGLang, llama.cpp, ...) as target,
draft or LLM judge.

The loop exchanges steps as text, so a plain completions endpoint is all it needs. The engine

- sends **one request per prompt**, concurrently (`HTTPClient.map`): rows of a batch may differ in
  ``max_tokens``, and ``usage`` is counted per request, not per choice, so one prompt per request
  gives exact per-row token counts. The server batches the concurrent requests itself
  (continuous batching) and reuses their shared prefix (vLLM ``--enable-prefix-caching``, SGLang's
  radix cache, llama.cpp ``cache_prompt``);
- sends ``model``, ``prompt``, ``max_tokens``, ``temperature``, ``top_p``, ``stop`` and, when set,
  ``seed`` and ``top_k`` (``top_k`` is an extension that vLLM, SGLang and llama.cpp accept; it is
  left out when 0 so strict servers are not confused);
- **restores the stop string**: servers strip it, the loop needs it at the end of a step. When
  ``finish_reason == "stop"`` it reads which string matched from ``stop_reason`` (vLLM:
  the string, or a token id / None for EOS), ``matched_stop`` (SGLang: same convention) or
  ``stopping_word`` / ``stop_type`` (llama.cpp native fields), and appends it unless the text
  already ends with it. A server that reports none of these leaves EOS and a stop string
  indistinguishable: with one stop string the engine assumes the stop string matched (an EOS is
  then reported as ``"stop"`` with the delimiter appended); with several it cannot know which one
  matched and assumes the first (a warning says so). Prefer vLLM/SGLang for several stops;
- maps ``usage.prompt_tokens`` / ``completion_tokens`` / ``prompt_tokens_details.cached_tokens``;
  token-level speculation counts are not exposed by this API (``spec_*`` stay 0).

**llama.cpp's server** (``llama-server``) answers ``/v1/completions`` without saying which stop
string matched, so an EOS and the step delimiter would look alike there. ``options.api`` picks the
route: ``"auto"`` (default) uses llama.cpp's native ``POST /completion`` when ``/v1/models`` says
``owned_by: llamacpp``, else ``/v1/completions``; ``"openai"`` / ``"llamacpp"`` force one. The
native request sends ``prompt``, ``n_predict``, ``temperature``, ``top_p``, ``top_k`` (0 = off),
``min_p: 0`` (llama.cpp's defaults are top_k 40 and min_p 0.05; ours are off), ``stop``,
``seed`` when set and ``cache_prompt`` (``options.cache_prompt``, default true: each row reuses
the KV cache of its slot). llama.cpp warns that cached and freshly processed prefixes do not give
bit-identical logits, and on this CPU they do not: greedy text then depends on what a slot held
before, so two ``ar`` runs can differ. ``cache_prompt: false`` makes every call recompute its
prefix and the text a function of the prefix alone (what lossless ``lr`` == ``ar`` needs), at the
cost of processing the whole prefix per call. The
answer's ``stop_type`` (``word`` / ``eos`` / ``limit``), ``stopping_word``, ``tokens_predicted``,
``tokens_evaluated`` and ``tokens_cached`` map onto the `Completion`. Its context length is
``/props`` ``default_generation_settings.n_ctx`` (per slot). Start it with ``-np N`` (N ≥ γ + 1
slots, so a round's rows decode together) and continuous batching (on by default).

`next_token_logprobs` asks for ``max_tokens: 1``, ``logprobs: options.top_logprobs`` (default 20,
vLLM's default ``--max-logprobs``) and reads ``choices[0].logprobs.top_logprobs[0]`` (token text ->
logprob). A candidate is matched by the text of its first token (local tokenizer), else by the
longest top-list token that starts the candidate; **a candidate missing from the top list gets
-inf** (its probability is below the k-th most likely token's; raise ``options.top_logprobs``, and
the server's logprob limit, to see further down).

**vLLM** (``/v1/models`` says ``owned_by: vllm``; ``options.api: vllm`` forces it) gets the
``/v1/completions`` route plus what vLLM adds to it:

- ``options.batch`` (vLLM only): ``"concurrent"`` (default) sends one request per row, as above;
  ``"list"`` sends the rows that share their sampling parameters as ONE request with a list of
  prompts (``choices[i].index`` = the row) and ``return_token_ids: true``, so each row's prompt and
  completion tokens are counted from its own ``prompt_token_ids`` / ``token_ids`` (vLLM's
  ``usage`` sums the rows; ``cached_tokens`` then stays 0). On this CPU both cost the same (a
  round of 3 rows: docs/vllm-cpu.md), and concurrent requests keep per-row usage, cached tokens
  and per-request metrics, hence the default;
- ``stop_reason`` names the matched stop string (or a token id / null for EOS), as above;
- ``usage.prompt_tokens_details.cached_tokens`` when the server runs with
  ``--enable-prompt-tokens-details`` (its automatic prefix caching is on by default);
- `next_token_logprobs` asks for the candidates' first token ids themselves
  (``logprob_token_ids``, ``logprobs: 1``, ``return_tokens_as_token_ids: true``) and reads
  ``top_logprobs[0]["token_id:<id>"]``: exact values for every candidate, no top-k cut (vLLM
  floors -inf at -9999, read back as -inf). A server that speculates answers such a request with
  HTTP 500 ("list index out of range" in ``_create_completion_logprobs``, vLLM 0.32 with
  ``--speculative-config`` ngram): there the engine asks for the top ``options.top_logprobs``
  instead, as for any server;
- **server-side speculative decoding** (``--speculative-config``): the engine sees from
  ``/metrics`` whether the server speculates (``vllm:spec_decode_num_draft_tokens`` is there). Per
  request, with ``--per-request-spec-decode-metrics summary``, a one-prompt answer carries
  ``metrics.speculative_decoding`` (``num_draft_tokens``, ``num_accepted_draft_tokens``,
  ``num_spec_steps``) -> ``Completion.spec_draft_tokens`` / ``spec_accepted_tokens`` /
  ``spec_verify_passes``. Otherwise (list requests, or servers without that flag) the engine
  reads the counters ``vllm:spec_decode_num_draft_tokens_total``, ``..._num_accepted_tokens_total``
  and ``..._num_drafts_total`` before and after each call and spreads the difference over the
  call's rows by their generated tokens (other clients' requests in the meantime are counted
  too). ``generate(speculate=...)`` cannot switch it per call: vLLM speculates in every request.

The base ``url`` may be given with or without a trailing ``/v1``; the model name is
``EngineConfig.model`` (``"auto"`` = the first id of ``/v1/models``). Tokenization: a local
transformers tokenizer from ``options.tokenizer`` or the model name (cached hub id / folder), else
the server's ``/tokenize`` (vLLM, SGLang, llama.cpp). ``context_length``: ``/v1/models``
``data[0].max_model_len`` (vLLM, SGLang), else the local tokenizer's limit, else None.

Sources relied on: vLLM ``CompletionResponseChoice.stop_reason`` ("the stop string or token id
that caused the completion to stop, None if ... EOS"), vLLM ``CompletionRequest``
(``logprob_token_ids``, ``return_tokens_as_token_ids``, ``return_token_ids``),
``PerRequestMetrics.speculative_decoding`` and ``v1/spec_decode/metrics.py`` (the Prometheus
counters; vLLM 0.32), vLLM/SGLang ``ModelCard.max_model_len``,
SGLang ``CompletionResponseChoice.matched_stop``, llama.cpp server ``tools/server/README.md``
(``POST /completion`` options and response, ``GET /props``, ``GET /v1/models`` ``owned_by``), the
OpenAI legacy completions ``logprobs.top_logprobs`` format.

Example:
    >>> from lookahead.config import EngineConfig, SamplingParams
    >>> judge = OpenAIEngine.from_config(EngineConfig(backend="openai", url="http://127.0.0.1:8000",
    ...                                               model="Qwen/Qwen2.5-7B-Instruct"))   # doctest: +SKIP
    >>> judge.next_token_logprobs(["Same meaning? Answer yes or no:"], [" yes", " no"])  # doctest: +SKIP
    >>> spec_counters("vllm:spec_decode_num_draft_tokens_total{engine=\"0\"} 8.0\n")
    {'draft': 8.0}
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from lookahead.config import EngineConfig, SamplingParams
from lookahead.engines.http import HTTPClient, RemoteTokenizer, client_options
from lookahead.engines.remote import (
    RemoteEngine,
    closed_on_error,
    connect_tokenizer,
    open_client,
    prepare_batch,
    tokenizer_context,
)
from lookahead.errors import ConfigError, LookaheadError
from lookahead.types import Completion

logger = logging.getLogger(__name__)

SERVER_HINT = (
    "start an OpenAI-compatible server there (vllm serve MODEL, python -m sglang.launch_server, llama-server; "
    "for the shipped presets: python scripts/launch_llamacpp.py --preset cpu-llamacpp, or "
    "python scripts/launch_vllm.py --preset cpu-vllm, or python scripts/launch_sglang.py --preset gpu-qwen3-32b) "
    "or fix the engine's url"
)
DEFAULT_TOP_LOGPROBS = 20
APIS = ("auto", "openai", "llamacpp", "vllm")  # options.api: which server's protocol generate() speaks
BATCHES = ("concurrent", "list")  # options.batch (vLLM): a call's rows as concurrent requests or list prompts
SPEC_COUNTERS = {  # vLLM's Prometheus counters (without the _total suffix) -> our names
    "vllm:spec_decode_num_draft_tokens": "draft",  # tokens proposed (tokens)
    "vllm:spec_decode_num_accepted_tokens": "accepted",  # of those, accepted (tokens)
    "vllm:spec_decode_num_drafts": "passes",  # verification steps that checked a draft (passes)
}
VLLM_LOGPROB_FLOOR = -9999.0  # vLLM writes -inf as this


def spec_counters(metrics: str) -> dict[str, float]:
    """vLLM's speculative-decoding counters in a Prometheus ``/metrics`` text, summed over label
    sets (one server, one model): ``{"draft", "accepted", "passes"}``, empty when it does not speculate."""
    totals: dict[str, float] = {}
    for line in metrics.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0].removesuffix("_total")
        if name in SPEC_COUNTERS:
            try:
                value = float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
            totals[SPEC_COUNTERS[name]] = totals.get(SPEC_COUNTERS[name], 0.0) + value
    return totals


class OpenAIEngine(RemoteEngine[HTTPClient]):
    """`Engine` over an OpenAI-compatible ``/v1/completions`` server (see the module docstring)."""

    # generate() may be called from several threads at once: stateless HTTP requests, batched by
    # the server (pipelined rounds and concurrency > 1 need no Ray pool in front of a server)
    thread_safe = True

    def __init__(
        self, client: HTTPClient, model: str, tokenizer: RemoteTokenizer, context: int | None = None, top_logprobs: int = 20,
        api: str = "openai", cache_prompt: bool = True, batch: str = "concurrent", speculates: bool = False,
    ) -> None:
        super().__init__(client, tokenizer, f"{api}:{model.rstrip('/').split('/')[-1]}", context)
        self.model = model  # the model name sent with every request
        self.top_logprobs = top_logprobs  # logprobs asked for in next_token_logprobs (count)
        self.api = api  # "openai" / "vllm": /v1/completions; "llamacpp": llama.cpp's native /completion
        self.cache_prompt = cache_prompt  # llamacpp: let a slot reuse its KV cache (faster, not bit-exact)
        self.batch = batch  # vllm: "concurrent" (one request per row) or "list" (one request, a list of prompts)
        self.speculates = speculates  # vllm: the server runs speculative decoding (its /metrics says so)
        self.per_request_spec = False  # vllm: answers carry metrics.speculative_decoding (seen once)
        self._warned_ambiguous = False

    @property
    def client(self) -> HTTPClient | None:
        """The server's `HTTPClient`; None after `shutdown`."""
        return self._connection

    @classmethod
    def from_config(cls, cfg: EngineConfig) -> OpenAIEngine:
        if not cfg.url:
            raise ConfigError("the openai backend needs url: the server's base URL, e.g. --set target.url=http://127.0.0.1:8000")
        opts = client_options(cfg.options)
        api, batch = (str(opts.get(key, default)).lower() for key, default in (("api", "auto"), ("batch", BATCHES[0])))
        if api not in APIS:
            raise ConfigError(f"options.api {opts.get('api')!r} is unknown; choose one of {', '.join(APIS)}")
        if batch not in BATCHES:
            raise ConfigError(f"options.batch {opts.get('batch')!r} is unknown; choose one of {', '.join(BATCHES)}")
        base = cfg.url.rstrip("/").removesuffix("/v1")
        client = open_client(cfg, opts, base_url=base, server="OpenAI-compatible", hint=SERVER_HINT)
        with closed_on_error(client):
            card = cls._model_card(client, cfg.model)
            model = str(card.get("id")) if cfg.model == "auto" else cfg.model
            tokenizer = connect_tokenizer(opts, client, [model, card.get("root")], model)
            if api == "auto":
                api = {"llamacpp": "llamacpp", "vllm": "vllm"}.get(str(card.get("owned_by")), "openai")
            context = card.get("max_model_len") or (cls._llamacpp_context(client) if api == "llamacpp" else None)
            context = context or tokenizer_context(tokenizer.local)
            speculates = api == "vllm" and bool(cls._spec_snapshot(client))
        top = int(opts.get("top_logprobs", DEFAULT_TOP_LOGPROBS))
        cache_prompt = opts.get("cache_prompt", True)
        if not isinstance(cache_prompt, bool):
            raise ConfigError(f"options.cache_prompt must be true or false, not {cache_prompt!r}")
        return cls(client, model, tokenizer, int(context) if context else None, top, api, cache_prompt, batch, speculates)

    @staticmethod
    def _spec_snapshot(client: HTTPClient) -> dict[str, float]:
        """vLLM's speculative-decoding counters now (empty: no /metrics, or no speculation)."""
        try:
            return spec_counters(client.get_text("/metrics"))
        except LookaheadError:
            return {}

    @staticmethod
    def _llamacpp_context(client: HTTPClient) -> int | None:
        """llama.cpp's context per slot (``/props`` ``default_generation_settings.n_ctx``), None if unknown."""
        try:
            props = client.get("/props")
        except LookaheadError:
            return None
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None

    @staticmethod
    def _model_card(client: HTTPClient, model: str) -> dict[str, Any]:
        """The ``/v1/models`` entry for ``model`` (or the first one); checks the server is up."""
        try:
            listing = client.get("/v1/models")
        except LookaheadError as exc:
            if model == "auto":
                raise ConfigError(f"model 'auto' needs /v1/models, which failed: {exc}") from None
            if "cannot reach" in str(exc):
                raise
            return {}
        data = [d for d in (listing.get("data") or []) if isinstance(d, dict)] if isinstance(listing, dict) else []
        for card in data:
            if card.get("id") == model:
                return card
        if model == "auto":
            if not data:
                raise ConfigError(f"model 'auto': {client.base_url}/v1/models lists no model; set the model name")
            return data[0]
        if data:
            logger.warning("%s does not list model %r (it serves %s)", client.base_url, model,
                           ", ".join(str(d.get("id")) for d in data))
        return {}

    # -- Engine protocol -----------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams | Sequence[SamplingParams],
        stop: Sequence[str] = (),
        speculate: bool = False,
    ) -> list[Completion]:
        """One concurrent request per prompt (vLLM with ``options.batch: list``: one request per
        group of rows sharing their sampling parameters); ``speculate`` is ignored (a server setting)."""
        started, prompts, per_row, stops = prepare_batch(prompts, params, stop)
        client = self._open()
        rows = list(zip(prompts, per_row, strict=False))
        as_list = self.api == "vllm" and self.batch == "list" and len(rows) > 1
        # list prompts never carry per-request metrics: their acceptance comes from /metrics
        from_metrics = self.speculates and (as_list or not self.per_request_spec)
        before = self._spec_snapshot(client) if from_metrics else None
        if self.api == "llamacpp":
            out = client.map(lambda row: self._native_completion(
                client.post("/completion", self._native_request(row[0], row[1], stops)), started), rows)
        elif as_list:
            out = self._list_completions(client, rows, stops, started)
        else:
            out = client.map(lambda row: self._completion(
                client.post("/v1/completions", self._request(row[0], row[1], stops)), stops, started), rows)
        if before is not None and (as_list or not self.per_request_spec):
            self._spread_spec(out, before, self._spec_snapshot(client))
        return out

    def next_token_logprobs(
        self, prompts: Sequence[str], candidates: Sequence[str], *, max_batch: int = 16
    ) -> list[dict[str, float]]:
        """Log-probability of each candidate's first token right after each prompt (-inf when it is
        not among the server's top ``options.top_logprobs``; vLLM: exact for every candidate); one
        dict per prompt, input order. One concurrent request per prompt (the server batches them;
        ``max_batch`` is not used)."""
        candidates = list(candidates)
        if self.api == "vllm" and not self.speculates:  # vLLM 0.32 fails logprob_token_ids while it speculates
            return self._vllm_logprobs(list(prompts), candidates)
        pieces = [self._first_piece(c) for c in candidates]
        client = self._open()

        def one(prompt: str) -> dict[str, float]:
            request = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                       "logprobs": self.top_logprobs}
            body = client.post("/v1/completions", request)
            choice = (body.get("choices") or [{}])[0]
            top = ((choice.get("logprobs") or {}).get("top_logprobs") or [None])[0] or {}
            return {c: self._lookup(top, c, piece) for c, piece in zip(candidates, pieces, strict=False)}

        return client.map(one, list(prompts))

    # -- vLLM ------------------------------------------------------------------------------------
    def _list_completions(
        self, client: HTTPClient, rows: list[tuple[str, SamplingParams]], stops: list[str], started: float
    ) -> list[Completion]:
        """The rows as list-prompt requests, one per group of rows with the same sampling
        parameters (groups sent concurrently); each row counted from its own token ids."""
        groups: dict[str, list[int]] = {}
        for i, (_, p) in enumerate(rows):
            groups.setdefault(json.dumps(self._request("", p, stops), sort_keys=True), []).append(i)
        out: list[Completion | None] = [None] * len(rows)

        def send(indices: list[int]) -> None:
            request = self._request("", rows[indices[0]][1], stops)
            request.update(prompt=[rows[i][0] for i in indices], return_token_ids=True)
            body = client.post("/v1/completions", request)
            choices = body.get("choices") if isinstance(body, dict) else None
            if not isinstance(choices, list) or len(choices) != len(indices):
                raise LookaheadError(f"{self.name}: a {len(indices)}-prompt request came back with "
                                     f"{len(choices) if isinstance(choices, list) else 'no'} choices: {str(body)[:200]}")
            for position, choice in enumerate(choices):
                row = indices[int(choice.get("index", position))]
                prompt_ids, ids = choice.get("prompt_token_ids"), choice.get("token_ids")
                out[row] = self._choice(choice, body, stops, started, len(prompt_ids) if isinstance(prompt_ids, list) else 0,
                                        len(ids) if isinstance(ids, list) else None, 0)

        client.map(send, list(groups.values()))
        return [c for c in out if c is not None]

    def _vllm_logprobs(self, prompts: list[str], candidates: list[str]) -> list[dict[str, float]]:
        """Exact first-token log-probabilities of the candidates (vLLM ``logprob_token_ids``)."""
        if not all(candidates):
            raise ConfigError("next_token_logprobs got an empty candidate; give non-empty strings")
        ids = [self.tokenizer.first_token(c)[0] for c in candidates]
        client = self._open()

        def one(prompt: str) -> dict[str, float]:
            request = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
                       "logprob_token_ids": sorted(set(ids)), "return_tokens_as_token_ids": True}
            choice = (client.post("/v1/completions", request).get("choices") or [{}])[0]
            top = ((choice.get("logprobs") or {}).get("top_logprobs") or [None])[0] or {}
            values = {c: float(top.get(f"token_id:{i}", -math.inf)) for c, i in zip(candidates, ids, strict=False)}
            return {c: (-math.inf if v <= VLLM_LOGPROB_FLOOR else v) for c, v in values.items()}

        return client.map(one, prompts)

    def _request_spec(self, body: dict[str, Any]) -> tuple[int, int, int] | None:
        """``(drafted, accepted, passes)`` from a one-prompt vLLM answer's per-request metrics."""
        metrics = body.get("metrics") if isinstance(body, dict) else None
        spec = metrics.get("speculative_decoding") if isinstance(metrics, dict) else None
        if not isinstance(spec, dict):
            return None
        self.per_request_spec = True
        return (int(spec.get("num_draft_tokens") or 0), int(spec.get("num_accepted_draft_tokens") or 0),
                int(spec.get("num_spec_steps") or 0))

    @staticmethod
    def _spread_spec(out: list[Completion], before: dict[str, float], after: dict[str, float]) -> None:
        """Share the call's counter increase over its rows, by generated tokens (largest remainder)."""
        weights = [max(c.completion_tokens, 0) for c in out]
        total = sum(weights)
        if not out or total == 0:
            return
        for key, field in (("draft", "spec_draft_tokens"), ("accepted", "spec_accepted_tokens"),
                           ("passes", "spec_verify_passes")):
            delta = max(int(round(after.get(key, 0.0) - before.get(key, 0.0))), 0)
            shares = [delta * w // total for w in weights]
            order = sorted(range(len(out)), key=lambda i: -(delta * weights[i] % total))
            for i in order[: delta - sum(shares)]:
                shares[i] += 1
            for completion, share in zip(out, shares, strict=False):
                setattr(completion, field, share)

    # -- helpers ---------------------------------------------------------------------------------
    def _request(self, prompt: str, p: SamplingParams, stops: list[str]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if stops:
            request["stop"] = stops
        if p.seed is not None:
            request["seed"] = p.seed
        if p.top_k > 0:
            request["top_k"] = p.top_k
        return request

    def _native_request(self, prompt: str, p: SamplingParams, stops: list[str]) -> dict[str, Any]:
        """llama.cpp ``POST /completion`` body: our sampling, with llama.cpp's extra filters off."""
        request: dict[str, Any] = {
            "prompt": prompt,
            "n_predict": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": max(p.top_k, 0),
            "min_p": 0.0,
            "cache_prompt": self.cache_prompt,
        }
        if stops:
            request["stop"] = stops
        if p.seed is not None:
            request["seed"] = p.seed
        return request

    def _native_completion(self, body: dict[str, Any], started: float) -> Completion:
        """A llama.cpp ``/completion`` answer as a `Completion` (stop word restored)."""
        if not isinstance(body, dict) or "content" not in body:
            raise LookaheadError(f"{self.name}: /completion answered without content: {str(body)[:200]}")
        text = str(body.get("content") or "")
        kind = body.get("stop_type")
        matched = None
        if kind == "word":
            matched = str(body.get("stopping_word") or "") or None
            finish = "stop" if matched else "eos"
        elif kind == "eos":
            finish = "eos"
        elif kind == "limit":
            finish = "length"
        else:
            raise LookaheadError(f"{self.name}: /completion ended with stop_type {kind!r}")
        prompt_tokens = int(body.get("tokens_evaluated") or 0)
        # tokens_cached counts the slot's whole cache; the reused share of this prompt is at most its length
        cached = min(int(body.get("tokens_cached") or 0), prompt_tokens)
        return self._built(text, finish, matched, prompt_tokens, body.get("tokens_predicted"), cached, started)

    def _completion(self, body: dict[str, Any], stops: list[str], started: float) -> Completion:
        """A one-prompt ``/v1/completions`` answer as a `Completion` (usage of the request)."""
        choices = body.get("choices") if isinstance(body, dict) else None
        if not choices:
            raise LookaheadError(f"{self.name}: the server answered without choices: {str(body)[:200]}")
        usage = body.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        completion = self._choice(choices[0], body, stops, started, int(usage.get("prompt_tokens") or 0),
                                  usage.get("completion_tokens"), int(details.get("cached_tokens") or 0))
        spec = self._request_spec(body) if self.api == "vllm" else None
        if spec is not None:
            completion.spec_draft_tokens, completion.spec_accepted_tokens, completion.spec_verify_passes = spec
        return completion

    def _choice(self, choice: dict[str, Any], body: dict[str, Any], stops: list[str], started: float,
                prompt_tokens: int, completion_tokens: Any, cached: int) -> Completion:  # fmt: skip
        """One choice of an answer ``body`` as a `Completion` (stop string restored)."""
        text = str(choice.get("text") or "")
        reason = choice.get("finish_reason")
        matched = None
        if reason == "length":
            finish = "length"
        elif reason in ("stop", "eos", None):
            matched = self._matched_stop(choice, body, stops) if reason is not None else None
            finish = "stop" if matched else "eos"
        else:
            raise LookaheadError(f"{self.name}: the server ended a completion with finish_reason {reason!r}")
        return self._built(text, finish, matched, prompt_tokens, completion_tokens, cached, started)

    def _built(self, text: str, finish: str, matched: str | None, prompt_tokens: int, completion_tokens: Any,
               cached: int, started: float) -> Completion:  # fmt: skip
        """The `Completion`, with the stop string the server stripped put back at the end."""
        if matched and not text.endswith(matched):
            text += matched
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=int(completion_tokens) if completion_tokens is not None else self.count_tokens(text),
            finish_reason=finish,  # type: ignore[arg-type]
            matched_stop=matched,
            latency_s=time.perf_counter() - started,
            cached_tokens=cached,
        )

    def _matched_stop(self, choice: dict[str, Any], body: dict[str, Any], stops: list[str]) -> str | None:
        """Which stop string ended a ``finish_reason == "stop"`` choice (None = EOS)."""
        for key in ("stop_reason", "matched_stop"):  # vLLM, SGLang: the string, or a token id / None
            if key in choice:
                value = choice[key]
                return value if isinstance(value, str) and value else None
        for source in (choice, body):  # llama.cpp native fields
            if "stopping_word" in source or "stop_type" in source:
                word = source.get("stopping_word")
                if source.get("stop_type") == "eos" or not word:
                    return None
                return str(word)
        if not stops:
            return None
        if len(stops) > 1 and not self._warned_ambiguous:
            logger.warning(
                "%s does not say which stop string matched; assuming the first of %r (use vLLM or SGLang, which do)",
                self.name, stops,
            )
            self._warned_ambiguous = True
        return stops[0]

    def _first_piece(self, candidate: str) -> str | None:
        if not candidate:
            raise ConfigError("next_token_logprobs got an empty candidate; give non-empty strings")
        if self.tokenizer.local is None:
            return None
        return self.tokenizer.first_token(candidate)[1]

    @staticmethod
    def _lookup(top: dict[str, float], candidate: str, piece: str | None) -> float:
        if piece is not None:
            return float(top[piece]) if piece in top else -math.inf
        prefixes = [token for token in top if token and candidate.startswith(token)]
        return float(top[max(prefixes, key=len)]) if prefixes else -math.inf
