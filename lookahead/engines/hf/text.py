"""The text side of a transformers-tokenized model: tokenize, count, decode, render chat.

These functions take the tokenizer, not an engine, so the Ray pool (`lookahead.engines.pool`)
counts and renders text exactly as an in-process `HFEngine` does while loading only the
tokenizer (`TokenizerText`), never the weights.

Example:
    >>> text = TokenizerText.load(EngineConfig(model="smollm2-135m-instruct"))  # doctest: +SKIP
    >>> text.count_tokens("Natalia sold 48 clips.\\n\\n")                          # doctest: +SKIP
    9
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lookahead.config import EngineConfig
from lookahead.errors import ConfigError, ModelLoadError

DECODE_KW = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
"""How generated ids become text: every token as written, no clean-up."""
CONTINUATION_PROBE = "A"  # a character that starts a token of its own after a newline


def encode_continuations(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as a prompt to continue: tokenized as if more text followed.

    BPE tokenizers merge whitespace at the very end of a text differently than inside it
    (SmolLM2: a final "\\n\\n" is one token, 1116; followed by text it is two, 198 198, and that
    is what the model writes). A prompt built from a model's own steps ends on the step
    delimiter, so plain tokenization would feed the model a sequence it never wrote and the
    step-by-step loop would part from one continuous decode after the first step. So a text
    ending in whitespace is tokenized with a probe character appended, and the probe's token is
    dropped when the rest decodes back to exactly the text; otherwise (e.g. a trailing space that
    merges with the probe) the plain tokenization stands.
    """
    plain = tokenizer(list(texts), add_special_tokens=False).input_ids
    probe_at = [i for i, t in enumerate(texts) if t and t[-1].isspace()]
    if not probe_at:
        return [list(ids) for ids in plain]
    probed = tokenizer([texts[i] + CONTINUATION_PROBE for i in probe_at], add_special_tokens=False).input_ids
    out = [list(ids) for ids in plain]
    for i, ids in zip(probe_at, probed, strict=False):
        head = list(ids[:-1])
        if ids and tokenizer.decode(ids[-1:]) == CONTINUATION_PROBE and tokenizer.decode(head) == texts[i]:
            out[i] = head
    return out


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` as a prompt to continue (`encode_continuations`); 0 for the empty text."""
    return len(encode_continuations(tokenizer, [text])[0]) if text else 0


def format_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The tokenizer's chat template applied to ``messages`` (with the assistant's turn opened);
    without a template, ``role: content`` lines and a final ``assistant: ``."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines + ["assistant: "])


def decode(tokenizer: Any, ids: list[int]) -> str:
    """The text of generated token ids (`DECODE_KW`)."""
    return tokenizer.decode(ids, **DECODE_KW)


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a row: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids: set[int] = set()
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    generation_config = getattr(model, "generation_config", None)
    candidates.append(getattr(generation_config, "eos_token_id", None))
    for value in candidates:
        if value is None:
            continue
        if isinstance(value, int):
            ids.add(value)
        else:
            ids.update(int(v) for v in value)
    return frozenset(ids)


def single_token_ids(tokenizer: Any, labels: Sequence[str], where: str = "") -> list[int]:
    """The token id of each label; a label that is not exactly one token raises `ConfigError`."""
    ids = []
    for label in labels:
        pieces = tokenizer(label, add_special_tokens=False).input_ids
        if len(pieces) != 1:
            shown = [tokenizer.convert_ids_to_tokens(i) for i in pieces]
            raise ConfigError(
                f"{where or 'label'} {label!r} is {len(pieces)} tokens in this tokenizer ({shown}), not one; "
                "pick labels that are single tokens (e.g. with or without a leading space) via options.labels"
            )
        ids.append(int(pieces[0]))
    return ids


class TokenizerText:
    """`count_tokens` / `format_chat` of an HF-tokenized model from its tokenizer alone (no weights)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer  # a transformers tokenizer

    @classmethod
    def load(cls, config: EngineConfig) -> TokenizerText:
        """The tokenizer of ``config.model`` (a GGUF file is converted once, as the engine would)."""
        from transformers import AutoTokenizer

        from lookahead.engines.hf.models import resolve_model

        resolved = resolve_model(config)  # converts a GGUF file once, before the actors look for it
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved.source, local_files_only=resolved.is_hub_id)
        except Exception as exc:  # transformers raises many types for unreadable folders
            raise ModelLoadError(f"could not load the tokenizer of {config.model!r} from {resolved.source}: {exc}") from exc
        return cls(tokenizer)

    def count_tokens(self, text: str) -> int:
        return count_tokens(self.tokenizer, text)

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return format_chat(self.tokenizer, messages)

    def shutdown(self) -> None:
        """Nothing to free (the pool calls it on whatever answers its text side)."""
