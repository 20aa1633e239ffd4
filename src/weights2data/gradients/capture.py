"""Hooks that capture, for chosen linear modules, their inputs x on the way forward and the
gradients δ = ∂(Σ_i L_i)/∂y of their outputs on the way back.

Parameters are frozen during the pass, so autograd only records what lies downstream of the
earliest chosen module: the backward stops there and never forms a weight gradient. A chosen
module whose output would not require a gradient (the earliest one, or siblings fed by the
same frozen input) gets a fresh leaf that does, so its δ is recorded too.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class Capture:
    """x and δ of each named module for the current batch."""

    def __init__(self, model: nn.Module, names: list[str], transposed: dict[str, bool],
                 bias: dict[str, bool]):
        self.model, self.names = model, list(names)
        self.transposed, self.bias = transposed, bias
        self.x: dict[str, torch.Tensor] = {}
        self.delta: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}

    def _hook(self, name: str):
        def hook(module, args, out):
            self.calls[name] = self.calls.get(name, 0) + 1
            self.x[name] = args[0].detach()
            if not out.requires_grad:
                out = out.detach().requires_grad_()
            out.register_hook(lambda g: self.delta.__setitem__(name, g))
            return out

        return hook

    @contextmanager
    def active(self):
        """Hooks on, parameters frozen (restored afterwards)."""
        if not self.names:
            yield self
            return
        modules = dict(self.model.named_modules())
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            for p, flag in flags:
                p.requires_grad_(flag)

    def reset(self) -> None:
        self.x.clear(), self.delta.clear(), self.calls.clear()

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(δ (B, T, O), x̃ (B, T, I')) of one module for the last batch."""
        if self.calls.get(name) != 1:
            raise RuntimeError(f"layer {name} ran {self.calls.get(name, 0)} times in one forward "
                               "pass; only modules applied once per pass can be extracted")
        x = self.x[name]
        delta = self.delta.get(name)
        if delta is None:  # the loss does not depend on this module's output
            delta = torch.zeros(*x.shape[:-1], self._out(name), dtype=x.dtype, device=x.device)
        if x.dim() == 2:  # a pooled (B, H) input: one position per document
            x, delta = x.unsqueeze(1), delta.unsqueeze(1)
        if self.bias[name]:
            x = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)
        return delta, x

    def _out(self, name: str) -> int:
        m = dict(self.model.named_modules())[name]
        return m.weight.shape[1] if self.transposed[name] else m.weight.shape[0]
