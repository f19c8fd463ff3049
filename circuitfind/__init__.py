"""circuitfind: automated circuit discovery in transformer language models."""

from circuitfind import metrics
from circuitfind.circuit import Circuit, EdgeScores, overlap
from circuitfind.discover import Run, discover
from circuitfind.errors import (CircuitfindError, ConfigError, MemoryPlanError, MetricError, ModelLoadError, ModelNotFoundError,
                                TaskError, UnsupportedModelError)
from circuitfind.evaluate import evaluate, faithfulness_curve, roc_auc, task_accuracy
from circuitfind.methods import METHODS, score_edges
from circuitfind.models import CircuitModel, from_hf, load_model
from circuitfind.plan import Plan, plan
from circuitfind.prune import prune
from circuitfind.sweep import load_sweep, sweep
from circuitfind.task import Batch, Example, Task, load_task
from circuitfind.uncertainty import Stability, stability

__version__ = "0.1.0"

__all__ = ["Run", "discover", "sweep", "load_sweep", "Circuit", "EdgeScores", "overlap", "METHODS", "score_edges",
           "prune", "evaluate", "faithfulness_curve", "roc_auc", "task_accuracy", "Batch", "Example", "Task",
           "load_task", "metrics", "CircuitModel", "CircuitfindError", "ConfigError", "MetricError",
           "ModelLoadError", "ModelNotFoundError", "TaskError", "UnsupportedModelError", "from_hf", "load_model",
           "Stability", "stability", "MemoryPlanError", "Plan", "plan", "__version__"]
