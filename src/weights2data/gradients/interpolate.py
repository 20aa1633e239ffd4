"""The synthetic checkpoints θ_α = θ0 + α(θf − θ0), without a third copy of a large model.

- α = 0 and α = 1 are the base and fine-tuned models themselves.
- A LoRA adapter's modules run as W0 x + α·s·B(A x): a forward hook adds the low-rank term
  to the base module's output, exactly, at the cost of two thin products.
- Every other parameter that differs is interpolated in a working copy of the base when one
  more copy is small next to the device's memory (a classifier, a small LM), and otherwise
  streamed: a pre-hook on each module puts the interpolated tensors in place for its own
  forward and a hook puts θ0 back after it, so at most one module's interpolated weights
  exist at a time (an 8B model with P = 3 fits one 80 GB GPU). The last layer, whose weights
  the closed form reads outside any forward, is interpolated for the whole pass.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

COPY_SHARE = 0.1  # a working copy is made when it takes at most this share of device memory


def device_memory(device: torch.device) -> int:
    """Total bytes of memory of `device` (host RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


class Interpolation:
    """θ_α for any α, from θ0 (`base`), θf (`finetuned`) and an optional LoRA adapter
    {module name: (A, B, scaling)} whose modules are interpolated low-rank."""

    def __init__(self, base: nn.Module, finetuned: nn.Module, head: str,
                 lora: dict[str, tuple[torch.Tensor, torch.Tensor, float]] | None = None,
                 stream: bool | None = None):
        self.base, self.finetuned, self.head = base, finetuned, head
        self.lora = lora or {}
        ft = dict(finetuned.named_modules())
        # (module of θ0, parameter name, θ0 tensor, θf tensor) for every parameter that
        # differs, outside the adapter's modules (their merged weights differ low-rank).
        self.changed: list[tuple[str, nn.Module, str, torch.Tensor, torch.Tensor]] = []
        for name, module in base.named_modules():
            if name in self.lora:
                continue
            for pname, p0 in module.named_parameters(recurse=False):
                pf = getattr(ft[name], pname)
                if not torch.equal(p0, pf):
                    self.changed.append((name, module, pname, p0, pf))
        if stream is None:
            stream = param_bytes(base) > COPY_SHARE * device_memory(next(base.parameters()).device)
        self.stream = stream
        self._work: nn.Module | None = None

    @contextmanager
    @torch.no_grad()
    def at(self, alpha: float) -> Iterator[nn.Module]:
        """The model at θ0 + α(θf − θ0), valid inside the `with` block."""
        if alpha == 0.0:
            yield self.base
        elif alpha == 1.0:
            yield self.finetuned
        elif not self.stream and not self.lora:
            yield self._copy(alpha)
        else:
            with self._hooked(alpha):
                yield self.base

    def _copy(self, alpha: float) -> nn.Module:
        if self._work is None:
            self._work = copy.deepcopy(self.base)
        modules = dict(self._work.named_modules())
        for name, _, pname, p0, pf in self.changed:
            getattr(modules[name], pname).copy_(torch.lerp(p0, pf, alpha))
        return self._work

    @contextmanager
    def _hooked(self, alpha: float) -> Iterator[None]:
        handles, pinned = [], []
        by_module: dict[nn.Module, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
        for name, module, pname, p0, pf in self.changed:
            if name == self.head:  # read outside its forward: interpolated for the whole pass
                pinned.append((module, pname, module._parameters[pname]))
                module._parameters[pname] = torch.lerp(p0, pf, alpha)
            else:
                by_module.setdefault(module, []).append((pname, p0, pf))
        for module, params in by_module.items():
            handles += _stream(module, params, alpha)
        modules = dict(self.base.named_modules())
        for name, (a, b, s) in self.lora.items():
            if name == self.head:
                module = modules[name]
                pinned.append((module, "weight", module._parameters["weight"]))
                w = module.weight.float() + alpha * s * (b.float() @ a.float())
                module._parameters["weight"] = w.to(module.weight.dtype)
                continue
            handles.append(modules[name].register_forward_hook(_low_rank(a, b, alpha * s)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for module, pname, original in pinned:
                module._parameters[pname] = original


def _stream(module: nn.Module, params, alpha: float) -> list:
    """Hooks that swap the interpolated tensors in for this module's forward only."""
    originals = {pname: module._parameters[pname] for pname, _, _ in params}

    @torch.no_grad()
    def swap_in(m, args):
        for pname, p0, pf in params:
            m._parameters[pname] = torch.lerp(p0, pf, alpha)

    def swap_out(m, args, out):
        for pname, original in originals.items():
            m._parameters[pname] = original

    return [module.register_forward_pre_hook(swap_in), module.register_forward_hook(swap_out)]


def _low_rank(a: torch.Tensor, b: torch.Tensor, scale: float):
    """A forward hook adding scale·B(A x) to a linear module's output."""

    def hook(module, args, out):
        x = args[0]
        return out + scale * ((x @ a.to(x.dtype).T) @ b.to(x.dtype).T)

    return hook
