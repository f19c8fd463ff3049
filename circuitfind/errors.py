"""Every error circuitfind raises on purpose.

Each message says what was expected, what was received, and what to do about it.
All derive from `CircuitfindError`, so `except cf.CircuitfindError` catches them all.
"""


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
