"""Which layers the gradients are taken of (`--layers`), and each one's target q.

- `last`: the framing's last layer (classifier head, LM head, label-token rows), in closed form.
- `changed`: every linear module whose weight or bias differs between θ0 and θf (a LoRA
  adapter's modules, and any module it trained in full).
- `adapter`: the modules of a PEFT LoRA adapter (and the modules it saved in full).
- `auto` (default): `last` when the last layer changed, else `changed`.
- names or globs (`model.layers.*.mlp.down_proj`), mixed freely with the keywords.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..config import UserError
from ..framings import Framing
from .targets import Target

KEYWORDS = ("auto", "last", "changed", "adapter")


@dataclass
class Layer:
    name: str
    kind: str  # "head" (closed form) or "linear" (captured δ and x)
    transposed: bool  # Conv1D keeps its weight as (in, out)
    bias: bool
    target: Target  # q = θ0 − θf in the (O, I') layout of the gradient

    @property
    def shape(self) -> tuple[int, int]:
        return self.target.shape

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape),
                "delta_norm": self.target.sqnorm() ** 0.5,
                "target": "low-rank" if self.target.low_rank is not None else "dense"}


@dataclass
class LayerSet:
    layers: list[Layer]
    spec: list[str]

    @property
    def head(self) -> Layer | None:
        return next((la for la in self.layers if la.kind == "head"), None)

    @property
    def inner(self) -> list[Layer]:
        return [la for la in self.layers if la.kind == "linear"]

    def targets(self) -> dict[str, Target]:
        return {la.name: la.target for la in self.layers}

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {la.name: la.shape for la in self.layers}

    def target_norm(self) -> float:
        return sum(la.target.sqnorm() for la in self.layers) ** 0.5

    def describe(self) -> list[dict]:
        return [la.describe() for la in self.layers]


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}


def _weight_and_bias(module: nn.Module) -> tuple[torch.Tensor, bool]:
    """[W | b] in the (out, in') layout, float32."""
    w = module.weight.detach()
    w = w.T if isinstance(module, Conv1D) else w
    b = getattr(module, "bias", None)
    if b is None:
        return w.float(), False
    return torch.cat([w.float(), b.detach().float().unsqueeze(1)], dim=1), True


def fold_names(names: list[str], most: int = 24) -> str:
    """Module names with block numbers folded: model.layers.*.mlp.up_proj, ..."""
    folded = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n) for n in names))
    more = f", … ({len(folded) - most} more)" if len(folded) > most else ""
    return ", ".join(folded[:most]) + more


def resolve(
    spec: list[str] | str,
    framing: Framing,
    base: nn.Module,
    finetuned: nn.Module,
    adapter: dict[str, tuple[torch.Tensor, torch.Tensor, float]] | None = None,
    saved: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> LayerSet:
    """The layers named by `spec`, in model order, each with its target; UserError for a name
    that matches nothing or a chosen layer that did not change."""
    spec = [spec] if isinstance(spec, str) else list(spec)
    adapter = adapter or {}
    head = framing.last_layer_name(base)
    linear = linear_modules(base)
    ft = dict(finetuned.named_modules())
    targets: dict[str, Target] = {}

    def target(name: str) -> Target:
        if name not in targets:
            targets[name] = _target(name, head, framing, base, finetuned, ft, linear, adapter, dtype)
        return targets[name]

    def changed(name: str) -> bool:
        if name in adapter:
            return True
        if name == head:
            return not torch.equal(framing.last_layer(base), framing.last_layer(finetuned))
        m0, mf = linear[name], ft[name]
        same_bias = (m0.bias is None) or torch.equal(m0.bias, mf.bias)
        return not (torch.equal(m0.weight, mf.weight) and same_bias)

    candidates = list(linear) + ([head] if head not in linear else [])
    chosen: set[str] = set()
    for item in spec:
        if item == "auto":
            chosen |= {head} if changed(head) else {n for n in candidates if changed(n)}
        elif item == "last":
            chosen.add(head)
        elif item == "changed":
            chosen |= {n for n in candidates if changed(n)}
        elif item == "adapter":
            if not adapter and not saved:
                raise UserError("--layers adapter needs a PEFT adapter as --finetuned")
            chosen |= set(adapter) | {n for n in (saved or []) if n in candidates and changed(n)}
        else:
            hits = {n for n in candidates if fnmatch.fnmatchcase(n, item)}
            if not hits:
                raise UserError(f"--layers {item!r} matches no linear module; the model has: "
                                f"{fold_names(candidates)}")
            chosen |= hits
    if not chosen:
        raise UserError("no layer differs between the base and the fine-tuned checkpoint: "
                        "they are the same model")
    still = [n for n in candidates if n in chosen and not changed(n)]
    if still:
        what = "the last layer " if still[0] == head else "layer "
        raise UserError(f"{what}{still[0]} is identical in both checkpoints (a frozen module, or "
                        "one an adapter left alone); choose layers that changed, e.g. --layers changed")
    layers = []
    for name in candidates:
        if name in chosen:
            module = linear.get(name) or framing.last_module(base)
            layers.append(Layer(name, "head" if name == head else "linear",
                                isinstance(module, Conv1D),
                                getattr(module, "bias", None) is not None, target(name)))
    return LayerSet(layers, spec)


def _target(name, head, framing, base, finetuned, ft, linear, adapter, dtype) -> Target:
    device = next(base.parameters()).device
    if name in adapter:
        a, b, s = adapter[name]
        module = linear.get(name) or framing.last_module(base)
        t = Target.of_lora(a.to(device), b.to(device), s, getattr(module, "bias", None) is not None)
        return t.rows(framing.rows()) if name == head else t
    if name == head:
        return Target.of_difference(framing.last_layer(base), framing.last_layer(finetuned), dtype)
    w0, _ = _weight_and_bias(linear[name])
    wf, _ = _weight_and_bias(ft[name])
    return Target.of_difference(w0, wf, dtype)
