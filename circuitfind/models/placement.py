"""A model's layers over several devices, as `transformers`' `device_map` places them: `resolve_device_map`.

    model = cf.load_model("meta-llama/Llama-3.1-8B", dtype="bfloat16", device_map="auto")
    model = cf.load_model(path, device_map={"model.embed_tokens": 0, "model.layers.0": 0, ...,
                                            "model.layers.31": 1, "model.norm": 1, "lm_head": 1})

A map names a device (an int is a CUDA index, as in transformers) for each module: the embedding, each layer
(`*.layers.{i}`, `*.h.{i}`, `blocks.{i}`) and the head (the final norm and unembedding: `lm_head`, `*.norm`,
`*.ln_f`, `unembed`); "" places the whole model, as transformers' {"": device}. A module the map does not
name is a ConfigError, as is a key circuitfind cannot read. "auto" spreads the layers evenly over the CUDA
devices there are (the embedding with the first layer, the head with the last), and puts them all on the CPU
where there are none. The engine's walks then compute each layer on its device and move the residual-stream
tensors at each layer boundary (`engine.offload.move`).

What was run: every layer on "cpu" through the same code (tests/test_offload.py). Nothing has been run on
several GPUs.
"""

from __future__ import annotations

import re

import torch

from circuitfind.errors import ConfigError

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)$")
_EMBED = ("embed_tokens", "wte", "wpe", "embed_in", "embed", "word_embeddings", "embed_positions")
_HEAD = ("lm_head", "norm", "ln_f", "final_layer_norm", "final_layernorm", "embed_out", "unembed", "ln_final")


def move(t, device):
    """A residual-stream tensor taken to the device of the layer that reads it next (a no-op on that device;
    the walks and the plain forward call it at every layer boundary of a model placed by a device_map)."""
    if t is None or t.device == device:
        return t
    return t.to(device)


def _device(value) -> torch.device:
    try:
        return torch.device(f"cuda:{value}" if isinstance(value, int) and not isinstance(value, bool) else value)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device_map values must be devices ('cpu', 'cuda:1') or CUDA indices; got {value!r} ({e})") \
            from None


def resolve_device_map(device_map, n_layers: int) -> tuple[torch.device, list[torch.device]]:
    """(embedding's device, [each layer's device, then the head's]) of length n_layers + 1, from a device_map."""
    if device_map == "auto":
        n = torch.cuda.device_count()
        if n == 0:
            return torch.device("cpu"), [torch.device("cpu")] * (n_layers + 1)
        layers = [torch.device(f"cuda:{l * n // max(n_layers, 1)}") for l in range(n_layers)]
        return layers[0] if layers else torch.device("cuda:0"), layers + [layers[-1] if layers else torch.device("cuda:0")]
    if not isinstance(device_map, dict) or not device_map:
        raise ConfigError(f"device_map must be 'auto' or a dict of module name → device; got {device_map!r}")
    if "" in device_map:
        if len(device_map) > 1:
            raise ConfigError("device_map's '' places the whole model: give it alone, or name each module")
        one = _device(device_map[""])
        return one, [one] * (n_layers + 1)
    embed, head, layers = None, None, [None] * n_layers
    for key, value in device_map.items():
        if not isinstance(key, str):
            raise ConfigError(f"device_map keys must be module names; got {key!r}")
        found = _LAYER.search(key)
        last = key.rsplit(".", 1)[-1]
        if found:
            layer = int(found.group(1))
            if layer >= n_layers:
                raise ConfigError(f"device_map names {key!r}, but the model has {n_layers} layers")
            layers[layer] = _device(value)
        elif last in _EMBED:
            embed = embed or _device(value)  # (token and position embeddings: the first one named)
        elif last in _HEAD:
            head = _device(value) if head is None or last in ("lm_head", "embed_out", "unembed") else head
        else:
            raise ConfigError(f"device_map key {key!r} is not a module circuitfind places (the embedding, "
                              "'*.layers.{i}', the final norm or 'lm_head')")
    missing = [f"layer {l}" for l, d in enumerate(layers) if d is None]
    missing += [what for what, d in (("the embedding", embed), ("the head (lm_head)", head)) if d is None]
    if missing:
        raise ConfigError(f"device_map places no device for {', '.join(missing[:4])}"
                          f"{' ...' if len(missing) > 4 else ''}: name every module, or use device_map='auto'")
    return embed, layers + [head]
