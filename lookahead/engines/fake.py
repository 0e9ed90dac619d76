"""A scripted engine for tests and demos: every character is one token, no model involved.

The engine "knows" a solution as a list of steps. Given a prompt, it finds the completion written
so far (the text after its chat marker), counts the complete steps in it and continues with the
remaining scripted steps. So a draft and a target with different step lists disagree exactly
where their scripts differ, and every loop edge case is a few lines of test.

``speculate=True`` never changes the text (as in a real engine under greedy decoding) and reports
deterministic token-speculation counts: the first token of a completion is a plain step, then
every verification pass proposes ``spec_num_tokens`` tokens and accepts ``spec_accept_per_pass``
of them (fewer in the last pass), so a completion of n tokens reports
``passes = ceil((n - 1) / (spec_accept_per_pass + 1))``, ``accepted = n - 1 - passes``,
``proposed = spec_num_tokens * passes``.

Example:
    >>> eng = FakeEngine(["a\\n\\n", "b\\n\\n"])
    >>> p = eng.format_chat([{"role": "user", "content": "q"}])
    >>> eng.generate([p], SamplingParams(max_new_tokens=50), stop=["\\n\\n"])[0].text
    'a\\n\\n'
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from lookahead.config import EngineConfig, SamplingParams
from lookahead.engines.base import EngineBase
from lookahead.errors import ModelLoadError
from lookahead.types import Completion

ANSWER_MARKER = "<assistant>\n"

DEFAULT_SCRIPT = [
    "Natalia sold 48 clips in April.\n\n",
    "In May she sold half as many: 48 / 2 = 24 clips.\n\n",
    "Altogether she sold 48 + 24 = 72 clips.\n\n",
    "The final answer is \\boxed{72}.",
]


def scripted_ending(text: str, stop: Sequence[str], max_new_tokens: int) -> tuple[str, str, str | None]:
    """A scripted continuation as an engine returns it: cut after the first stop string
    (finish "stop", the string kept) or at ``max_new_tokens`` ("length"), else "eos".
    Returns (text, finish_reason, matched_stop)."""
    finish, matched = "eos", None
    cut = min(((text.find(s) + len(s), s) for s in stop if s and s in text), default=None)
    if cut is not None:
        text, finish, matched = text[: cut[0]], "stop", cut[1]
    if len(text) > max_new_tokens or (len(text) == max_new_tokens and finish == "eos"):
        text, finish, matched = text[:max_new_tokens], "length", None
    return text, finish, matched


class FakeEngine(EngineBase):
    """Scripted engine; ``calls`` records the batch size of every `generate` call."""

    def __init__(
        self,
        steps: Sequence[str],
        delimiter: str = "\n\n",
        name: str = "fake",
        context: int | None = None,
    ) -> None:
        self.steps = list(steps)  # the scripted solution, one entry per step
        self.delimiter = delimiter  # how the script's steps are counted in a completion
        self.name = name
        self.context = context  # context length in characters (None = unbounded)
        self.calls: list[int] = []  # batch size of each generate() call, in order
        self.speculate_calls: list[bool] = []  # the `speculate` flag of each generate() call
        self.spec_num_tokens = 4  # speculate=True: tokens proposed per verification pass (tokens)
        self.spec_accept_per_pass = 2  # speculate=True: of those, accepted per pass (tokens)
        self.delay_per_token = 0.0  # seconds slept per generated token (for timing demos)

    @classmethod
    def from_config(cls, config: EngineConfig) -> FakeEngine:
        """``model`` is "fake" (a built-in GSM8K-style script) or a JSON/YAML file ``{steps: [...]}``."""
        if config.model in ("fake", "smollm2-135m-instruct"):
            engine = cls(DEFAULT_SCRIPT)
            engine.spec_num_tokens = config.speculation.num_tokens
            return engine
        path = Path(config.model)
        if not path.is_file():
            raise ModelLoadError(f"fake engine script {path} does not exist")
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
            raise ModelLoadError(f"fake engine script {path} must hold a mapping with a 'steps' list")
        engine = cls([str(s) for s in data["steps"]], name=f"fake:{path.stem}")
        engine.spec_num_tokens = config.speculation.num_tokens
        return engine

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + ANSWER_MARKER

    def count_tokens(self, text: str) -> int:
        return len(text)

    def context_length(self) -> int | None:
        return self.context

    def shutdown(self) -> None:
        pass

    def continuation(self, prompt: str) -> str:
        """What this script writes after ``prompt`` (until the end of the script)."""
        completion = prompt.rsplit(ANSWER_MARKER, 1)[-1]
        done = completion.count(self.delimiter)
        partial = completion[completion.rfind(self.delimiter) + len(self.delimiter) :] if done else completion
        rest = self.steps[done:]
        if rest and partial and rest[0].startswith(partial):
            rest = [rest[0][len(partial) :], *rest[1:]]
        return "".join(rest)

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams | Sequence[SamplingParams],
        stop: Sequence[str] = (),
        speculate: bool = False,
    ) -> list[Completion]:
        start = time.perf_counter()
        per_row = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        self.calls.append(len(prompts))
        self.speculate_calls.append(speculate)
        out = []
        for prompt, p in zip(prompts, per_row, strict=True):
            text, finish, matched = scripted_ending(self.continuation(prompt), stop, p.max_new_tokens)
            if self.delay_per_token:
                time.sleep(self.delay_per_token * len(text))
            completion = Completion(
                text=text,
                prompt_tokens=len(prompt),
                completion_tokens=len(text),
                finish_reason=finish,
                matched_stop=matched,
                latency_s=time.perf_counter() - start,
            )
            if speculate:
                self._count_speculation(completion)
            out.append(completion)
        return out

    def _count_speculation(self, completion: Completion) -> None:
        """Fill the token-speculation counts (the scheme of the module docstring)."""
        after_first = max(completion.completion_tokens - 1, 0)
        accept = min(self.spec_accept_per_pass, self.spec_num_tokens)
        passes = -(-after_first // (accept + 1))  # ceil
        completion.spec_verify_passes = passes
        completion.spec_accepted_tokens = after_first - passes
        completion.spec_draft_tokens = self.spec_num_tokens * passes
