"""User-facing errors: each one names what went wrong and how to fix it.

The CLI turns any `LookaheadError` into a one-line message and exit code 2 (no traceback);
library users catch them like any exception.

Example:
    >>> from lookahead.errors import ConfigError
    >>> raise ConfigError("gamma must be >= 1 (got 0); set e.g. --set gamma=2")
"""


class LookaheadError(Exception):
    """Base class of every error caused by input the user can fix."""


class ConfigError(LookaheadError):
    """An unknown key, a bad value or an unreadable config file."""


class ModelLoadError(LookaheadError):
    """A model path that does not exist, or a package the model needs that is missing."""


class PromptError(LookaheadError):
    """An empty prompt, or one longer than the model's context."""


class DataError(LookaheadError):
    """A dataset file that is missing or a row that lacks the expected field."""


class GenerationCancelled(LookaheadError):
    """The generation was cancelled (a closed stream, a disconnected client, a second Ctrl-C) while
    an engine call of it waited; the reasoner ends it with finish reason "cancelled"."""


class PeerError(LookaheadError):
    """A peer's own library (llama.cpp, transformers) failed on one problem; the eval records it as
    that problem's error and goes on."""
