"""The part of a `Walk` (`walk.py`) that knows where things are: the ablated outputs fetched from the store's
place (`offload.Place`) to the device of the layer computed now, and, for a model whose layers are placed over
several devices (`CircuitModel.place`, a `device_map`), the residual-stream tensors and attention rows moved to
each layer's device at its boundary."""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.engine.offload import fetch, move
from circuitfind.engine.store import take


class Devices:
    """The part of `Walk` that fetches from the store's place and moves between the layers' devices."""

    def _abl(self, senders) -> Tensor:
        """The ablated outputs of these senders (an int, or ids [s]) on the device of the layer computed now, in
        the model's dtype: [K|1, b'|1, pos|1, d] or [s, K|1, b'|1, pos|1, d] (fetched from the place off it)."""
        part = self.abl[senders] if isinstance(senders, int) else take(self.abl, senders, 0)
        return fetch(self.place, part, self._device, self.model.dtype)

    @property
    def _device(self) -> torch.device:
        """The device of the layer computed now (the model's, unless its layers are placed over several)."""
        return self.model.layer_device(min(self.layer, self.cfg.n_layers))

    def _to_layer_device(self) -> None:
        """At a layer boundary of a model placed over several devices: the residual-stream tensors to the next
        layer's device (the rows of the store are moved as they are mixed, `_mix`)."""
        device = self._device
        self.resid, self.base = move(self.resid, device), move(self.base, device)
        self._attn_const = move(self._attn_const, device)
        if self._mlp_partial is not None:
            self._mlp_partial = (move(self._mlp_partial[0], device), self._mlp_partial[1])

    def _allowed_rows(self, layer: int, K: int) -> Tensor:
        """Which keys each attention row may read, [K·b', 1, pos, keys], on the layer's device."""
        rows = self._allowed_here(layer, K)
        if self.model.layer_devices is not None:  # (over several devices: the rows on the layer's, cached)
            key = ("placed", layer in self.cfg.sliding_layers, K, self._device)
            if key not in self._allowed:
                self._allowed[key] = rows.to(self._device)
            return self._allowed[key]
        return rows

    def _rope_rows(self, K: int, layer: int):
        """(cos, sin) of the layer as attention rows [K·b', 1, pos, rotary_dim] at the keys' positions
        (a shared prefix's too), computed once per K (and per kind of layer where sliding layers rotate
        by frequencies of their own)."""
        if self.model.layer_devices is not None:  # (over several devices: the rows on the layer's, cached)
            key = ("placed rope", K, self.model.rope_key(layer), self._device)
            if key not in self._allowed:
                rope = self._rope_here(K, layer)
                self._allowed[key] = None if rope is None else tuple(t.to(self._device) for t in rope)
            return self._allowed[key]
        return self._rope_here(K, layer)
