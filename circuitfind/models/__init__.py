"""Models: loading any supported causal LM into the canonical decomposed transformer."""

from circuitfind.models.canonical import CanonicalConfig, CircuitModel
from circuitfind.models.loading import from_hf, load_model

__all__ = ["CanonicalConfig", "CircuitModel", "from_hf", "load_model"]
