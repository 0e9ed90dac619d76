"""Engine registry: one place that maps a backend name to its class (imported lazily).

Example:
    >>> from lookahead.config import EngineConfig
    >>> engine = create_engine(EngineConfig(backend="hf", model="smollm2-135m-instruct"))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lookahead.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from lookahead.config import EngineConfig
    from lookahead.engines.base import Engine

_REGISTRY = {
    "hf": "lookahead.engines.hf:HFEngine",
    "fake": "lookahead.engines.fake:FakeEngine",
}
ENGINE_NAMES = tuple(_REGISTRY)


def create_engine(config: EngineConfig) -> Engine:
    """Instantiate the engine named by ``config.backend``; unknown names raise with the list."""
    try:
        target = _REGISTRY[config.backend]
    except KeyError:
        raise ConfigError(
            f"engine backend {config.backend!r} is unknown; choose one of {', '.join(ENGINE_NAMES)}"
        ) from None
    module_name, class_name = target.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"the {config.backend!r} engine needs the package {exc.name!r}, which is not installed; "
            f"pip install {exc.name}"
        ) from None
    return cls.from_config(config)
