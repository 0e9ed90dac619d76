"""Name -> class registries whose entries are imported lazily ("module:Class" strings).

Example:
    >>> cls = lookup({"exact": "lookahead.verifiers.exact:ExactVerifier"}, "exact", "verifier")
    >>> cls.__name__
    'ExactVerifier'
"""

from __future__ import annotations

import importlib

from lookahead.errors import ConfigError, ModelLoadError


def lookup(registry: dict[str, str], name: str, kind: str) -> type:
    """The class registered as ``name``; an unknown name raises with the list of known names."""
    try:
        target = registry[name]
    except KeyError:
        raise ConfigError(f"{kind} {name!r} is unknown; choose one of {', '.join(registry)}") from None
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and not exc.name.startswith("lookahead"):
            raise ModelLoadError(
                f"the {kind} {name!r} needs the package {exc.name!r}, which is not installed; pip install {exc.name}"
            ) from None
        raise
    return getattr(module, class_name)
