"""`load_model`: any Hugging Face causal LM (hub id, local directory, loaded model, or a state
dict plus config) converted once into a `CircuitModel`.

Safety: never `trust_remote_code`; safetensors preferred; `torch.load` only with
`weights_only=True`. Everything the user named is validated before weights are read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import os
from pathlib import Path

import torch

from circuitfind.errors import ConfigError, ModelLoadError, ModelNotFoundError, UnsupportedModelError
from circuitfind.models.adapters import ADAPTERS
from circuitfind.models.adapters.nearest import unsupported
from circuitfind.models.canonical import CircuitModel

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ConfigError(f"dtype {dtype!r} is not a floating-point dtype; use one of {sorted(DTYPES)}")


def resolve_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {device!r} is not a device name ({e}); use 'cpu', 'cuda', 'cuda:0' or 'mps'") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device {device!r} is not available here ({torch.cuda.device_count()} CUDA devices); use 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available here; use 'cpu'")
    return dev


@contextlib.contextmanager
def quiet_loading():
    """Hide transformers' "Loading weights" bar while loading (`--quiet`, a sweep's own bar, the zoo's
    small shipped models)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def load_model(name_or_path: str | os.PathLike | None = None, *, hf_model=None, state_dict=None, config=None,
               tokenizer=None, dtype=torch.float32, device="cpu", experts: bool = False,
               device_map=None) -> CircuitModel:
    """Load a model and convert it to canonical form.

    name_or_path: a zoo name (`circuitfind zoo`), a local directory (saved or fine-tuned
        checkpoint with config.json), or a Hugging Face hub id (needs the weights cached or a network).
    hf_model: an already-loaded `transformers.PreTrainedModel`.
    state_dict + config: weights (a dict of tensors, or a .safetensors/.pt/.bin path) for a
        `transformers` config (object, dict, or path/hub id of one), the way fine-tuned weights
        are often shared.
    tokenizer: a tokenizer, or the directory or hub id of one (a fine-tuned checkpoint saved without
        its tokenizer: the base model's); by default the checkpoint's own.
    experts: for a mixture of experts, the expert-level graph: each expert a sender `m{l}.e{j}` with its
        input and router input as receivers (`circuitfind.graph`), so a circuit says which experts it uses.
    device_map: the layers over several devices, as `transformers`' device_map places them ("auto", or a dict
        of module name → device: `models.placement`); in place of `device`. Run on the CPU alone (every layer
        on "cpu", tests/test_offload.py), never on several GPUs.
    """
    if device_map is not None:
        if str(device) != "cpu":
            raise ConfigError(f"give device={device!r} or device_map=, not both (device_map places every module)")
        model = load_model(name_or_path, hf_model=hf_model, state_dict=state_dict, config=config, tokenizer=tokenizer,
                           dtype=dtype, experts=experts)
        return model.place(device_map)
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    if not isinstance(experts, bool):
        raise ConfigError(f"experts must be True or False, got {experts!r}")
    given = [x is not None for x in (name_or_path, hf_model, state_dict)]
    if sum(given) != 1:
        raise ConfigError("pass exactly one of name_or_path, hf_model=, or state_dict= (with config=)")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _tokenizer_from(str(tokenizer))
    name = str(name_or_path) if name_or_path is not None else ""
    if name_or_path is not None:
        from circuitfind.models import zoo  # the zoo knows shipped and named models
        entry = zoo.lookup(name)
        if entry is not None:
            model = zoo.load_entry(entry, dtype=dtype, device=device)
            if tokenizer is not None:
                model.tokenizer = tokenizer
            return expert_level(model) if experts else model
        try:
            hf_model, tokenizer = _from_pretrained(name, tokenizer)
        except ModelNotFoundError as e:  # a typo of a zoo name ("toy_lm") reads as a hub id first
            close = difflib.get_close_matches(name, zoo.ZOO, n=1, cutoff=0.8)
            if close:
                raise ModelNotFoundError(f"{e} Did you mean the zoo model {close[0]!r}?") from None
            raise
    elif state_dict is not None:
        hf_model = _from_state_dict(state_dict, config)
    return from_hf(hf_model, tokenizer=tokenizer, name=name or getattr(hf_model.config, "_name_or_path", ""),
                   dtype=dtype, device=device, experts=experts)


def _tokenizer_from(name: str):
    """A tokenizer from a directory or hub id (never running code from it)."""
    import transformers

    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise ModelNotFoundError(f"tokenizer directory {name!r} does not exist")
    try:
        return transformers.AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as e:
        raise ModelNotFoundError(f"cannot load a tokenizer from {name!r}: pass a directory holding tokenizer.json "
                                 f"(or the other tokenizer files), or a hub id in the local cache ({e})") from None


def from_hf(hf_model, *, tokenizer=None, name: str = "", dtype=torch.float32, device="cpu",
            experts: bool = False) -> CircuitModel:
    """Convert an already-loaded Hugging Face causal LM into a `CircuitModel` (experts: as `load_model`)."""
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    if not isinstance(experts, bool):
        raise ConfigError(f"experts must be True or False, got {experts!r}")
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(unsupported(model_type, "this"))
    cfg, flags, state, rotary = ADAPTERS[model_type](hf_model)
    with torch.device("meta"):
        model = CircuitModel(cfg, tokenizer=tokenizer, name=name, **flags)
    state = {k: v.detach().to(torch.float32) for k, v in state.items() if v is not None}  # (absent biases)
    model.load_state_dict(state, strict=True, assign=True)
    model.inv_freq, model.inv_freq_local = torch.zeros(0), torch.zeros(0)  # off the meta device
    if rotary is not None:
        model.inv_freq, model.rope_scaling = rotary[0], rotary[1]
        if len(rotary) == 4:  # sliding layers with frequencies of their own
            model.inv_freq_local, model.rope_scaling_local = rotary[2], rotary[3]
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return expert_level(model) if experts else model


def expert_level(model: CircuitModel) -> CircuitModel:
    """The model with the expert-level graph (`load_model(..., experts=True)`), its weights shared."""
    if not model.cfg.n_experts:
        raise ConfigError(f"experts=True needs a mixture-of-experts model; {model.name or 'this model'} "
                          f"({model.cfg.family}) has dense MLPs")
    model.cfg = dataclasses.replace(model.cfg, expert_senders=True)
    model._graph = None  # built again from the new config
    return model


def _from_pretrained(name: str, tokenizer):
    import transformers

    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~")) or os.sep + os.sep in name
    if looks_local:
        if not path.is_dir():
            raise ModelNotFoundError(f"model directory {str(path)!r} does not exist; pass a directory holding "
                                     "config.json and weights, a hub id, or a zoo name (see `circuitfind zoo`)")
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"directory {str(path)!r} has no config.json; save the model with "
                                     "`save_pretrained(dir)` or pass state_dict= and config=")
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        _check_supported(model_type, str(path))
    elif not _looks_like_hub_id(name):
        raise ModelNotFoundError(f"{name!r} is neither a zoo name, a local directory nor a hub id; "
                                 "run `circuitfind zoo` to list known models")
    try:
        config = transformers.AutoConfig.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot load the config of {name!r}: the model is not in the local Hugging Face "
                                 "cache and the hub cannot be reached. Fetch it once online with "
                                 f"`huggingface-cli download {name}` (or pass a local directory). ({e})") from None
    _check_supported(config.model_type, name)
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(name, config=config, trust_remote_code=False,
                                                               dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot load the weights of {name!r} ({e}); fetch them with "
                                 f"`huggingface-cli download {name}` or pass a local directory") from None
    has_tokenizer_files = not looks_local or any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                              "vocab.json", "tokenizer.model"))
    if tokenizer is None and has_tokenizer_files:  # token-level models (toy, tracr) have none
        try:
            tokenizer = _tokenizer_from(name)
        except ModelNotFoundError:  # the model still loads: text needs a tokenizer, token ids do not
            log.warning("no tokenizer found for %s; pass token ids instead of text", name)
    return hf, tokenizer


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(p and all(ch.isalnum() or ch in "-_." for ch in p) for p in parts)


def _check_supported(model_type, where: str) -> None:
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(unsupported(model_type, where))


def _from_state_dict(state_dict, config):
    import transformers

    if config is None:
        raise ConfigError("state_dict= needs config= (a transformers config, a dict, or the path/hub id of one)")
    if isinstance(config, dict):
        config = dict(config)
        model_type = config.pop("model_type", None)
        _check_supported(model_type, "config")
        config = transformers.AutoConfig.for_model(model_type, **config)
    elif isinstance(config, (str, os.PathLike)):
        config = transformers.AutoConfig.from_pretrained(str(config), trust_remote_code=False)
    _check_supported(getattr(config, "model_type", None), "config")
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = read_weights(Path(state_dict))
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(config)
    expected = hf.state_dict()
    for key, value in state_dict.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            raise ModelLoadError(f"state dict tensor {key!r} has shape {tuple(value.shape)} but the config expects "
                                 f"{tuple(expected[key].shape)}; is this the config these weights were trained with?")
    missing = [k for k in expected if k not in state_dict and not _is_tied(hf, k)]
    if missing:
        raise ModelLoadError(f"state dict lacks {len(missing)} tensors the config needs, first {missing[0]!r}")
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        raise ModelLoadError(f"state dict has {len(unexpected)} tensors the config does not know, first {unexpected[0]!r}")
    hf.load_state_dict(state_dict, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        hf.tie_weights()
    return hf.eval()


def _is_tied(hf, key: str) -> bool:
    return key.endswith(("lm_head.weight",)) and bool(getattr(hf.config, "tie_word_embeddings", False))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file: safetensors, or a torch pickle under `weights_only=True` (never arbitrary code)."""
    if not path.exists():
        raise ModelNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unpickling failure means: refuse the file
        raise ModelLoadError(f"refused to load {str(path)!r}: it is not a plain tensor pickle and circuitfind never "
                             f"runs code from weight files ({type(e).__name__}). Convert it to safetensors.") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{str(path)!r} does not hold a dict of tensors (got {type(obj).__name__})")
    return obj
