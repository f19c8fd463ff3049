"""circuitfind: automated circuit discovery in transformer language models."""

from circuitfind.errors import (CircuitfindError, ConfigError, MetricError, ModelLoadError, ModelNotFoundError,
                                TaskError, UnsupportedModelError)
from circuitfind.models import CircuitModel, from_hf, load_model

__version__ = "0.1.0"

__all__ = ["CircuitModel", "CircuitfindError", "ConfigError", "MetricError", "ModelLoadError", "ModelNotFoundError",
           "TaskError", "UnsupportedModelError", "from_hf", "load_model", "__version__"]
