"""Every error circuitfind raises on purpose.

Each message says what was expected, what was received, and what to do about it.
All derive from `CircuitfindError`, so `except cf.CircuitfindError` catches them all.
`count` is the check behind every "a count of ..." argument.
"""

import operator


class CircuitfindError(Exception):
    """Base class of every error circuitfind raises for bad input or an unsupported case."""


class ModelNotFoundError(CircuitfindError):
    """A model name, directory or hub id that cannot be found (or is not cached offline)."""


class UnsupportedModelError(CircuitfindError):
    """An architecture, or a config option of a known architecture, that has no adapter."""


class ModelLoadError(CircuitfindError):
    """Weights that cannot be read safely or do not fit the config."""


class ConfigError(CircuitfindError):
    """A bad argument: unknown dtype or device, wrong mask shape, unknown ablation, ..."""


class TaskError(CircuitfindError):
    """A task that cannot be loaded, generated or batched for a model."""


class MetricError(CircuitfindError):
    """A metric that returns NaN or a tensor of the wrong shape."""


class MemoryPlanError(CircuitfindError):
    """A run whose planned peak memory fits the memory given at no batch size (`circuitfind.plan`)."""


def count(value, name: str, least: int = 0, most: int | None = None) -> int:
    """value as an int in [least, most] (numpy and 0-d tensor integers too; not a bool or a float),
    or a ConfigError naming `name` and the range."""
    try:
        n = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        n = None
    if n is None or n < least or (most is not None and n > most):
        bounds = f"between {least} and {most}" if most is not None else f"≥ {least}"
        raise ConfigError(f"{name} must be a count {bounds}, got {value!r}")
    return n
