"""Name -> class registries whose entries are imported lazily ("module:Class" strings).

The engine backends and the verifiers are listed here, in the lowest layer, so that the config can
check a name without importing the packages that implement them (which import the config back).

Example:
    >>> cls = lookup({"exact": "lookahead.verifiers.exact:ExactVerifier"}, "exact", "verifier")
    >>> cls.__name__
    'ExactVerifier'
"""

from __future__ import annotations

import importlib

from lookahead.errors import ConfigError, ModelLoadError

ENGINES = {
    "hf": "lookahead.engines.hf:HFEngine",  # in-process transformers
    "fake": "lookahead.engines.fake:FakeEngine",  # scripted steps, for tests
    "sglang": "lookahead.engines.sglang:SGLangEngine",  # SGLang server (url) or in-process sglang.Engine
    "openai": "lookahead.engines.openai_compat:OpenAIEngine",  # any /v1/completions server
}
ENGINE_NAMES = tuple(ENGINES)
POOL = {"pool": "lookahead.engines.pool:PoolEngine"}  # replicas >= 1: Ray actors (the only `import ray`)

VERIFIERS = {
    "exact": "lookahead.verifiers.exact:ExactVerifier",
    "normalized": "lookahead.verifiers.exact:NormalizedVerifier",
    "numeric": "lookahead.verifiers.numeric:NumericVerifier",
    "embedding": "lookahead.verifiers.embedding:EmbeddingVerifier",
    "llm_judge": "lookahead.verifiers.llm_judge:LLMJudgeVerifier",
    "score": "lookahead.verifiers.score:ScoreVerifier",
    "cascade": "lookahead.verifiers.cascade:CascadeVerifier",
}
VERIFIER_NAMES = tuple(VERIFIERS)


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
