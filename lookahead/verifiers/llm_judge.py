"""LLM-as-judge verifier: a model reads both steps and says whether they are aligned.

Any engine can judge -- the reasoner's target itself (``engine: target``, the default: no extra
model, the strongest judge at hand), its draft (``engine: draft``) or a model of its own
(``engine: {backend: hf, model: PATH}``). The judge does not write an answer: one batched forward
pass over the prompts of all pairs of the round gives the next-token log-probabilities of the two
labels (aligned / unaligned, e.g. " yes" / " no"; see `lookahead.verifiers.logits`), and

    score = P(aligned) / (P(aligned) + P(unaligned))     accepted when score >= threshold (0.5)

Prompt templates live in ``lookahead/verifiers/templates/`` (fields ``{context}``, ``{target}``,
``{draft}``). ``template: auto`` picks by the judge's model family:

- ``chat`` (``judge_chat.txt``): the instruction as a user message rendered with the engine's
  own chat template (`Engine.format_chat`); the first assistant token is the label ("Yes"/"No");
- ``qwen3``: ``chat`` plus an empty ``<think></think>`` block, so Qwen3 answers without thinking;
- ``generic`` (``judge.txt``): a plain completion prompt ending "Answer:" (labels " yes"/" no"),
  for base models without a chat template;
- a path to a ``.txt`` file: your own completion prompt (give ``labels`` if not " yes"/" no").

Pairs whose steps are identical, or where a step is empty, are decided without the model (see
`trivial_verdict`). The context is cut to its last ``max_context_chars`` characters. Failures and
``timeout_s`` reject the batch (counted in ``failures``, see `GuardedVerifier`).

Example:
    >>> from lookahead.verifiers import create_verifier
    >>> v = create_verifier(VerifierConfig(name="llm_judge", options={"engine": "target"}),
    ...                     {"target": lambda: reasoner.target}, step_delimiter="\\n\\n")  # doctest: +SKIP
    >>> v.verify([""], ["16 - 3 = 13 eggs\\n\\n"], ["She has 13 eggs left.\\n\\n"])[0].score  # doctest: +SKIP
    0.91
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lookahead.engines.base import Engine
from lookahead.errors import ConfigError
from lookahead.steps import DEFAULT_STEP_DELIMITER
from lookahead.types import Verdict
from lookahead.verifiers.base import (
    GuardedVerifier,
    int_option,
    number_option,
    step_body,
    str_option,
    trivial_verdict,
)

TEMPLATES_DIR = Path(__file__).parent / "templates"
VARIANTS = ("auto", "generic", "chat", "qwen3")
QWEN3_NO_THINK = "<think>\n\n</think>\n\n"  # Qwen3's own "thinking disabled" assistant prefix


def read_template(path: Path, fields: Sequence[str]) -> str:
    """A template file's text (trailing whitespace dropped); bad braces or fields raise ConfigError."""
    if not path.is_file():
        raise ConfigError(f"prompt template {path} does not exist; give an existing .txt file or one of {', '.join(VARIANTS)}")
    text = path.read_text(encoding="utf-8").rstrip()
    try:
        text.format(**{name: "" for name in fields})
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"prompt template {path} is not a valid format string ({exc}); it may use {{{'}, {'.join(fields)}}} "
            "and must write {{ and }} for literal braces"
        ) from None
    return text


def resolve_engine(engine: Any, engines: Mapping[str, Callable[[], Any]], where: str) -> Callable[[], Any]:
    """A zero-argument getter of the judge engine named by the ``engine`` option."""
    if isinstance(engine, str):
        if engine not in ("target", "draft"):
            raise ConfigError(
                f"{where} {engine!r} is unknown; use target, draft or a mapping like {{backend: hf, model: PATH}}"
            )
        if engine not in engines:
            raise ConfigError(f"{where}: no {engine} engine is available here; give {{backend: hf, model: PATH}}")
        return engines[engine]
    if isinstance(engine, Mapping):
        from lookahead.config import EngineConfig, dataclass_from_dict

        config = dataclass_from_dict(EngineConfig, dict(engine), where)
        config.validate(where)
        built: list[Any] = []

        def own_engine() -> Any:
            if not built:
                from lookahead.engines import create_engine

                built.append(create_engine(config))
            return built[0]

        return own_engine
    if isinstance(engine, Engine):  # an Engine object (library use)
        return lambda: engine
    raise ConfigError(f"{where} must be target, draft or a mapping {{backend: ..., model: ...}} (got {engine!r})")


class LogitJudge(GuardedVerifier):
    """Shared machinery of the judges that read label log-probabilities (llm_judge, score)."""

    needs_engines = True
    template_stem = "judge"  # templates/<stem>.txt (generic) and <stem>_chat.txt (chat, qwen3)
    fields = ("context", "draft", "target")  # fields the templates may use
    top_score = 1.0  # the highest score a verdict can have (given to identical steps)

    def __init__(
        self,
        engines: Mapping[str, Callable[[], Any]] | None = None,
        engine: Any = "target",
        template: str = "auto",
        labels: Sequence[str] | None = None,
        max_context_chars: int = 4000,
        max_batch: int = 16,
        delimiter: str = DEFAULT_STEP_DELIMITER,
        timeout_s: float | None = None,
    ) -> None:
        max_context_chars = int_option(max_context_chars, "max_context_chars", "4000")
        max_batch = int_option(max_batch, "max_batch", "16")
        delimiter = str_option(delimiter, "delimiter", repr(DEFAULT_STEP_DELIMITER))
        template = str_option(template, "template", "auto")
        super().__init__(timeout_s, delimiter)
        where = f"verifier.options.engine of {self.name}"
        self._get_engine = resolve_engine(engine, engines or {}, where)
        self.template = str(template)  # "auto", "generic", "chat", "qwen3" or a .txt path
        if self.template not in VARIANTS:
            read_template(Path(self.template), self.fields)  # fail now, not at the first round
        if labels is not None and (isinstance(labels, str) or not all(isinstance(x, str) and x for x in labels)):
            raise ValueError(f"labels must be a list of non-empty strings (got {labels!r})")
        self.labels = list(labels) if labels is not None else None  # None = the variant's defaults
        if max_context_chars < 0 or max_batch < 1:
            raise ValueError("max_context_chars must be >= 0 and max_batch >= 1")
        self.max_context_chars = int(max_context_chars)  # context shown to the judge (characters)
        self.max_batch = int(max_batch)  # prompts per forward pass (rows)
        self._prepared: tuple[Any, str, str, list[str], str] | None = None  # engine, variant, text, labels, prefix
        self._prepare_lock = threading.Lock()

    # -- subclass hooks ------------------------------------------------------------------------
    def default_labels(self, engine: Any, variant: str) -> tuple[list[str], str]:
        """(labels, text appended to every prompt before the label) for a template variant."""
        raise NotImplementedError

    def judge(self, logprobs: list[float], draft: str, target: str) -> Verdict:
        raise NotImplementedError

    # -- the batch ------------------------------------------------------------------------------
    def verify(self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]) -> list[Verdict]:
        self.prepare()  # load the judge and check its labels here, outside the timed worker
        return super().verify(contexts, drafts, targets)

    def prepare(self) -> tuple[Any, str, str, list[str], str]:
        """Load the judge engine, pick the template variant and check the labels (once)."""
        with self._prepare_lock:
            if self._prepared is None:
                engine = self._get_engine()
                variant = self._variant(engine)
                if variant in VARIANTS:
                    suffix = "" if variant == "generic" else "_chat"
                    text = read_template(TEMPLATES_DIR / f"{self.template_stem}{suffix}.txt", self.fields)
                else:
                    text = read_template(Path(variant), self.fields)
                labels, prefix = self.default_labels(engine, "generic" if variant not in VARIANTS else variant)
                if self.labels is not None:
                    labels, prefix = self.labels, ""
                engine.check_logprob_labels(labels, where=f"{self.name} label")  # can it judge at all, with these?
                self._prepared = (engine, variant, text, labels, prefix)
        return self._prepared

    def _variant(self, engine: Any) -> str:
        if self.template != "auto":
            return self.template
        if "qwen3" in str(engine.name).lower():
            return "qwen3"
        tokenizer = engine.tokenizer
        if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
            return "generic"  # an HF base model: no chat template to render
        return "chat"

    def render(self, context: str, draft: str, target: str) -> str:
        """The judge's prompt for one pair (steps without their delimiter)."""
        engine, variant, text, _, prefix = self.prepare()
        if self.max_context_chars and len(context) > self.max_context_chars:
            context = "..." + context[-self.max_context_chars :]
        elif not self.max_context_chars:
            context = ""
        body = text.format(context=context.strip() or "(nothing yet: these are the first steps)", draft=draft, target=target)
        if variant in ("chat", "qwen3"):
            body = engine.format_chat([{"role": "user", "content": body}])
            if variant == "qwen3":
                body += QWEN3_NO_THINK
        return body + prefix

    def _verify_batch(self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]) -> list[Verdict]:
        from lookahead.verifiers.logits import label_logprobs

        engine, _, _, labels, _ = self.prepare()
        verdicts: list[Verdict | None] = []
        prompts, rows = [], []
        for i, (context, draft, target) in enumerate(zip(contexts, drafts, targets, strict=True)):
            d, t = step_body(draft, self.delimiter), step_body(target, self.delimiter)
            decided = trivial_verdict(d, t, self.name, self.top_score)
            verdicts.append(decided)
            if decided is None:
                prompts.append(self.render(context, d, t))
                rows.append((i, d, t))
        if prompts:
            scores = label_logprobs(engine, prompts, labels, max_batch=self.max_batch)
            for (i, d, t), logprobs in zip(rows, scores, strict=True):
                verdicts[i] = self.judge(logprobs, d, t)
        return [v for v in verdicts if v is not None]


class LLMJudgeVerifier(LogitJudge):
    """Accept when the judge's P(aligned) / (P(aligned) + P(unaligned)) >= threshold."""

    name = "llm_judge"

    def __init__(self, threshold: float = 0.5, **options: Any) -> None:
        known = {"engines", "engine", "template", "labels", "max_context_chars", "max_batch", "delimiter", "timeout_s"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown options {unknown}; the llm_judge verifier takes threshold, {', '.join(sorted(known - {'engines'}))}")
        threshold = number_option(threshold, "threshold", "0.5")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] (got {threshold})")
        labels = options.get("labels")
        if labels is not None and (isinstance(labels, str) or not isinstance(labels, Sequence) or len(labels) != 2):
            raise ValueError(f"labels must be two strings, [aligned, unaligned] (got {options['labels']!r})")
        super().__init__(**options)
        self.threshold = float(threshold)  # minimum P(aligned) among the two labels

    def default_labels(self, engine: Any, variant: str) -> tuple[list[str], str]:
        return ([" yes", " no"] if variant == "generic" else ["Yes", "No"]), ""

    def judge(self, logprobs: list[float], draft: str, target: str) -> Verdict:
        aligned, unaligned = logprobs
        if aligned == -math.inf and unaligned == -math.inf:
            return Verdict(False, 0.0, self.name, reason="the judge gave neither label any probability")
        score = 1.0 / (1.0 + math.exp(min(unaligned - aligned, 700.0)))
        labels = self.prepare()[3]
        reason = f"P({labels[0].strip()})={math.exp(aligned):.3g} P({labels[1].strip()})={math.exp(unaligned):.3g}"
        return Verdict(score >= self.threshold, score, self.name, reason=reason)
