"""Engine registry: one place that maps a backend name to its class (imported lazily).

Example:
    >>> from lookahead.config import EngineConfig
    >>> engine = create_engine(EngineConfig(backend="hf", model="smollm2-135m-instruct"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookahead.registry import lookup

if TYPE_CHECKING:
    from lookahead.config import EngineConfig
    from lookahead.engines.base import Engine

_REGISTRY = {
    "hf": "lookahead.engines.hf:HFEngine",
    "fake": "lookahead.engines.fake:FakeEngine",
    "sglang": "lookahead.engines.sglang:SGLangEngine",  # SGLang server (url) or in-process sglang.Engine
    "openai": "lookahead.engines.openai_compat:OpenAIEngine",  # any /v1/completions server
}
ENGINE_NAMES = tuple(_REGISTRY)


def create_engine(
    config: EngineConfig, *, ray_address: str | None = None, call_timeout_s: float = 600.0, call_retries: int = 2
) -> Engine:
    """Instantiate the engine named by ``config.backend``; unknown names raise with the list.

    ``config.replicas >= 1`` puts that many copies in Ray actors behind one `PoolEngine`.
    """
    if config.replicas > 0:
        from lookahead.pool import PoolEngine

        return PoolEngine.from_config(
            config, ray_address=ray_address, call_timeout_s=call_timeout_s, call_retries=call_retries
        )
    return lookup(_REGISTRY, config.backend, "engine backend").from_config(config)
