"""Verifier factory: a verifier name to its verifier (the table is `lookahead.registry.VERIFIERS`; classes import lazily).

``exact`` / ``normalized`` (string checks), ``numeric`` (same numbers), ``embedding`` (cosine of
sentence embeddings), ``llm_judge`` (a model says aligned or not), ``score`` (the target rates the
draft step 0-9, SpecReason-style) and ``cascade`` (cheap stages first, a model last).

Every verifier gets the configured step delimiter (``step_delimiter``, from
`LookaheadConfig.step_delimiter`); an explicit ``options.delimiter`` still wins where a verifier
has one.

Example:
    >>> from lookahead.config import VerifierConfig
    >>> create_verifier(VerifierConfig(name="normalized"), step_delimiter="\\n\\n").name
    'normalized'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from lookahead.errors import ConfigError
from lookahead.registry import VERIFIER_NAMES, VERIFIERS, lookup

__all__ = ["VERIFIER_NAMES", "create_verifier"]

if TYPE_CHECKING:
    from lookahead.config import VerifierConfig
    from lookahead.engines.base import Engine
    from lookahead.verifiers.base import Verifier



EngineGetters = Mapping[str, "Callable[[], Engine]"]
"""Engines a verifier may borrow, by role (``"target"``, ``"draft"``), loaded only when called."""


def create_verifier(config: VerifierConfig, engines: EngineGetters | None = None, *, step_delimiter: str) -> Verifier:
    """Instantiate the verifier named by ``config.name``; unknown names raise with the list.

    ``step_delimiter`` is where a step ends (`LookaheadConfig.step_delimiter`): the verifier
    strips or compares on it (``delimiter=``). A verifier class with ``needs_engines = True``
    receives ``engines=`` (the reasoner's own target and draft, so an LLM judge can be the target
    itself without loading it twice).
    """
    cls = lookup(VERIFIERS, config.name, "verifier")
    if not isinstance(config.options, Mapping):
        raise ConfigError(f"verifier.options must be a mapping of option names to values (got {config.options!r})")
    kwargs = dict(config.options)
    kwargs.setdefault("delimiter", step_delimiter)
    if cls.needs_engines:
        kwargs["engines"] = dict(engines or {})
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"verifier {config.name!r}: {exc}") from None
