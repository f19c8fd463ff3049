"""circuitfind: automated circuit discovery in transformer language models."""

from circuitfind.errors import (CircuitfindError, ConfigError, MetricError, ModelLoadError, ModelNotFoundError,
                                TaskError, UnsupportedModelError)
from circuitfind import metrics
from circuitfind.models import CircuitModel, from_hf, load_model
from circuitfind.task import Batch, Example, Task, load_task

__version__ = "0.1.0"

__all__ = ["Batch", "Example", "Task", "load_task", "metrics", "CircuitModel", "CircuitfindError", "ConfigError", "MetricError", "ModelLoadError", "ModelNotFoundError",
           "TaskError", "UnsupportedModelError", "from_hf", "load_model", "__version__"]
