"""Engine factory: a backend name to its engine (the table is `lookahead.registry.ENGINES`; classes import lazily).

Every class is named by a ``"module:Class"`` string, the Ray pool too, so this package imports
none of its engines: `lookahead.engines.pool` imports `create_engine` from here (to build the
engine inside each actor), never the other way round.

Example:
    >>> from lookahead.config import EngineConfig
    >>> engine = create_engine(EngineConfig(backend="hf", model="smollm2-135m-instruct"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookahead.registry import ENGINE_NAMES, ENGINES, POOL, lookup

__all__ = ["ENGINE_NAMES", "create_engine"]

if TYPE_CHECKING:
    from lookahead.config import EngineConfig
    from lookahead.engines.base import Engine



def create_engine(
    config: EngineConfig, *, ray_address: str | None = None, call_timeout_s: float = 600.0, call_retries: int = 2
) -> Engine:
    """Instantiate the engine named by ``config.backend``; unknown names raise with the list.

    ``config.replicas >= 1`` puts that many copies in Ray actors behind one `PoolEngine`.
    """
    if config.replicas > 0:
        return lookup(POOL, "pool", "engine pool").from_config(
            config, ray_address=ray_address, call_timeout_s=call_timeout_s, call_retries=call_retries
        )
    return lookup(ENGINES, config.backend, "engine backend").from_config(config)
