"""Prompt building: the question becomes chat messages, each engine renders its own template.

Draft and target may be different model families, so the loop keeps the messages and asks each
engine to render them (`Engine.format_chat`); the committed steps are appended as plain text.

Example:
    >>> build_messages("What is 2+2?", "{question} Think step by step.", None)
    [{'role': 'user', 'content': 'What is 2+2? Think step by step.'}]
"""

from __future__ import annotations

from collections.abc import Sequence

from lookahead.errors import PromptError

Messages = list[dict[str, str]]
"""Chat messages in the OpenAI shape: ``[{"role": ..., "content": ...}, ...]``."""

Prompt = str | Sequence[dict[str, str]]
"""A question as the user gives it: plain text, or chat messages."""


def build_messages(question: str, template: str, system_prompt: str | None) -> Messages:
    """Wrap a question into chat messages; an empty question is refused."""
    if not question or not question.strip():
        raise PromptError("the question is empty; pass the problem text or --example TASK:N")
    messages: Messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": template.format(question=question.strip())})
    return messages


def normalize_messages(messages: Sequence[dict[str, str]]) -> Messages:
    """Check OpenAI-style messages ({role, content}) and refuse empty conversations."""
    out: Messages = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise PromptError(f"message {i} must be a mapping with 'role' and 'content'")
        out.append({"role": str(message["role"]), "content": str(message["content"])})
    if not any(m["content"].strip() for m in out if m["role"] == "user"):
        raise PromptError("the messages hold no non-empty user message")
    return out
