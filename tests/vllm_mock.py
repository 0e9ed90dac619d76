"""A vLLM-flavoured mock server (tests only): `MockServer` plus what vLLM 0.32 adds to the OpenAI API.

`VLLMMockServer` answers like ``vllm.entrypoints.openai.api_server``:

- ``GET /v1/models``: ``owned_by: "vllm"``, ``root``, ``max_model_len``;
- ``POST /v1/completions`` with ``prompt`` a string or a list: one choice per prompt in order
  (``index``), ``stop_reason`` = the matched stop string (None at EOS), the stop string stripped,
  ``usage`` summed over the prompts (``prompt_tokens_details.cached_tokens`` of the LAST prompt,
  as vLLM reports it); ``return_token_ids`` -> ``prompt_token_ids`` / ``token_ids`` per choice;
  ``logprobs`` with ``logprob_token_ids`` -> the sampled token plus exactly those ids, keyed
  ``token_id:<id>`` under ``return_tokens_as_token_ids`` (-inf written as -9999.0, as vLLM does);
- **speculative decoding** (``spec_tokens`` > 0): every generated row of n tokens took
  ``ceil(n / (accept + 1))`` verification steps proposing ``spec_tokens`` tokens each, ``accept``
  of which were accepted per step; ``GET /metrics`` (Prometheus text) carries the running
  ``vllm:spec_decode_num_drafts_total`` / ``..._num_draft_tokens_total`` /
  ``..._num_accepted_tokens_total`` counters, and with ``per_request_metrics`` a one-prompt answer
  carries ``metrics.speculative_decoding`` (suppressed for list prompts, as in vLLM).

One character is one token (id = ``ord(char)``), continued by the `FakeEngine` script.

Example:
    >>> with VLLMMockServer(["A1.\\n\\n"], spec_tokens=4, accept=1) as server:   # doctest: +SKIP
    ...     requests.get(server.url + "/metrics").text
"""

from __future__ import annotations

import math
from http.server import BaseHTTPRequestHandler
from typing import Any

from mock_servers import MockServer


class VLLMMockServer(MockServer):
    """`MockServer` speaking vLLM's dialect (see the module docstring)."""

    def __init__(self, steps: list[str], *, spec_tokens: int = 0, accept: int = 0, per_request_metrics: bool = False,
                 **kw: Any) -> None:  # fmt: skip
        super().__init__(steps, **kw)
        self.spec_tokens = spec_tokens  # tokens proposed per verification step (0 = no speculation)
        self.accept = accept  # of those, accepted per step (tokens)
        self.per_request_metrics = per_request_metrics  # one-prompt answers carry metrics.speculative_decoding
        self.counters = {"drafts": 0, "draft_tokens": 0, "accepted_tokens": 0}  # the /metrics counters

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        if (method, handler.path) != ("GET", "/metrics"):
            return super()._handle(handler, method)
        self.requests.append({"method": method, "path": handler.path, "headers": dict(handler.headers), "body": None})
        data = self.metrics_text().encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain; version=0.0.4")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def metrics_text(self) -> str:
        """The Prometheus exposition of the counters (with the HELP/TYPE/_created lines vLLM writes)."""
        lines = [f'vllm:num_requests_running{{engine="0",model_name="{self.model}"}} 0.0']
        if self.spec_tokens:
            for name, value in self.counters.items():
                metric = f"vllm:spec_decode_num_{name}"
                lines += [f"# HELP {metric}_total Number of spec decoding {name}.", f"# TYPE {metric}_total counter",
                          f'{metric}_total{{engine="0",model_name="{self.model}"}} {float(value)}',
                          f'{metric}_created{{engine="0",model_name="{self.model}"}} 1.7e+09']  # fmt: skip
            lines.append(f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="0",position="0"}} {99.0}')
        return "\n".join(lines) + "\n"

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model, "object": "model", "owned_by": "vllm", "root": "/models/" + self.model,
                "max_model_len": self.context}

    def _speculate(self, generated: int) -> dict[str, int]:
        """One row's speculative-decoding counts; the server's counters grow by them."""
        steps = math.ceil(generated / (self.accept + 1)) if generated else 0
        spec = {"num_spec_steps": steps, "num_draft_tokens": steps * self.spec_tokens,
                "num_accepted_draft_tokens": max(generated - steps, 0)}
        self.counters["drafts"] += steps
        self.counters["draft_tokens"] += spec["num_draft_tokens"]
        self.counters["accepted_tokens"] += spec["num_accepted_draft_tokens"]
        return spec

    def _completions(self, body: dict[str, Any]) -> Any:
        if body.get("model") != self.model:
            raise ValueError(f"The model `{body.get('model')}` does not exist.")
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        choices, usage, cached, spec = [], {"prompt_tokens": 0, "completion_tokens": 0}, 0, None
        for i, prompt in enumerate(prompts):
            text, kind, matched = self._continue(prompt, int(body.get("max_tokens", 16)), stops)
            usage["prompt_tokens"] += len(prompt)
            usage["completion_tokens"] += len(text)
            cached = self._cached(prompt)
            spec = self._speculate(len(text)) if self.spec_tokens else None
            choice: dict[str, Any] = {"index": i, "text": text[: len(text) - len(matched)] if kind == "stop" else text,
                                      "logprobs": None, "finish_reason": "length" if kind == "length" else "stop",
                                      "stop_reason": matched if kind == "stop" else None}  # fmt: skip
            if body.get("return_token_ids"):
                choice.update(prompt_token_ids=[ord(c) for c in prompt], token_ids=[ord(c) for c in text])
            if body.get("logprobs") is not None:
                choice["logprobs"] = self._logprobs(prompt, text, body)
            choices.append(choice)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
        answer = {"id": "cmpl-mock", "object": "text_completion", "model": self.model, "choices": choices, "usage": usage}
        if spec is not None and self.per_request_metrics and len(prompts) == 1:
            answer["metrics"] = {"speculative_decoding": {**spec, "num_spec_tokens": self.spec_tokens,
                                                          "mean_acceptance_length": 1.0, "draft_acceptance_rate": 0.0,
                                                          "acceptance_histogram": []}}  # fmt: skip
        return answer

    def _logprobs(self, prompt: str, text: str, body: dict[str, Any]) -> dict[str, Any]:
        dist = self._next_char_logprobs(prompt)
        first = ord(text[0]) if text else 0
        wanted = body.get("logprob_token_ids") or sorted(dist, key=lambda t: -dist[t])[: body["logprobs"]]
        by_id = body.get("return_tokens_as_token_ids")

        def key(token: int) -> str:
            return f"token_id:{token}" if by_id else chr(token)

        top = {key(t): max(dist.get(t, -math.inf), -9999.0) for t in [first, *wanted]}
        return {"tokens": [key(first)], "token_logprobs": [top[key(first)]], "top_logprobs": [top], "text_offset": [0]}
