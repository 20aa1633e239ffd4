"""Gradients of every document at every synthetic checkpoint, one pass per checkpoint.

Per batch: one forward pass of the model body; the last layer's residuals, loss and statistics
in closed form, in chunks of documents so the float32 logits stay bounded whatever the
vocabulary; and, when layers inside the model are chosen, one partial backward pass seeded
with ∂L/∂h = rᵀW at the last layer's input, stopped at the earliest chosen layer. Results stay
on the device and are copied back in large blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..framings import Framing, Tokens
from ..framings.tokens import DEFAULT_CPU_BATCH_TOKENS, collate, plan_batches
from . import closed_form
from .capture import Capture
from .interpolate import Interpolation
from .layers import LayerSet
from .projection import Sketch

_SINK_BYTES = 1 << 28  # results kept on the device before one copy to the host

# visit(layer name, documents of the batch (a slice), δ (b, T, O), x̃ (b, T, I')): sees every
# factor pair as it is formed (the head's chunk by chunk), e.g. to sum exact gradients.
Visit = Callable[[str, slice, torch.Tensor, torch.Tensor], None]


@dataclass
class Gradients:
    """What selection needs: projected gradients plus exact scalars per document."""

    grads: torch.Tensor  # (P, N, d) projected (or exact) gradients, float32
    align: torch.Tensor  # (P, N) exact ⟨g, q⟩
    sqnorm: torch.Tensor  # (P, N) exact ‖g‖²
    target: torch.Tensor  # (d,) the target q, mapped like the gradients
    target_norm: float  # exact ‖q‖
    alphas: list[float]  # interpolation coefficient of each checkpoint
    base_loss: torch.Tensor | None = None  # (N,) loss at θ0 (available when α=0 is among alphas)
    projector: dict = field(default_factory=dict)

    def cosines(self) -> torch.Tensor:
        """mean_j cos(g_{j,i}, q): the top-k score, (N,)."""
        denom = self.sqnorm.sqrt() * self.target_norm
        return torch.where(denom > 0, self.align / denom.clamp_min(1e-30), 0.0).mean(0)


def checkpoint_alphas(checkpoints: int, grad_at: str) -> list[float]:
    """θ_j = θ0 + (j/P)Δ for j = 0..P-1, or θf alone."""
    if grad_at == "finetuned":
        return [1.0]
    if checkpoints < 1:
        raise ValueError("checkpoints must be ≥ 1")
    return [j / checkpoints for j in range(checkpoints)]


def auto_batch_tokens(model: torch.nn.Module, backward: bool) -> int:
    """Padded tokens per batch: a fixed budget on the CPU; on a GPU, what half of the free
    memory holds by a rough per-token cost (an out-of-memory batch is split and retried)."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return DEFAULT_CPU_BATCH_TOKENS
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1024)
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 12)
    size = next(model.parameters()).element_size()
    per_token = hidden * size * (40 * layers if backward else 24)
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(1 << 17, max(256, 0.5 * free // per_token)))


def batch_gradients(
    framing: Framing,
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    labels: torch.Tensor | None,
    layers: LayerSet,
    sketch: Sketch,
    capture: Capture,
    visit: Visit | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sketches (B, d), alignments (B,), squared norms (B,), losses (B,)) of one batch;
    `visit` is shown every layer's factors (δ, x̃)."""
    dtype = next(model.parameters()).dtype
    inner = layers.inner
    capture.reset()
    with torch.enable_grad() if inner else nullcontext():
        pos = framing.forward(model, batch)
    n, device = len(pos.weight), pos.weight.device
    y = pos.target if labels is None else labels.to(device).unsqueeze(1)
    proj = torch.zeros(n, sketch.dim, device=device)
    align, sq, loss = (torch.zeros(n, device=device) for _ in range(3))
    head = layers.head
    grad_h = torch.zeros_like(pos.hidden) if inner else None
    with torch.no_grad():
        h_in = pos.inputs()
        for s in pos.chunks():
            r, loss[s] = closed_form.residuals_and_loss(pos.logits(s), pos.weight[s], y[s])
            if head is not None:
                sketch.add(proj[s], head.name, r, h_in[s], dtype)
                align[s] += head.target.align(r, h_in[s], dtype)
                sq[s] += closed_form.squared_norms(r, h_in[s], dtype)
                if visit is not None:
                    visit(head.name, s, r, h_in[s])
            if inner:  # ∂L/∂h at the last layer's input, for the backward pass
                grad_h[s] = closed_form.mm(r, pos.head_weight, dtype).to(grad_h.dtype)
    if inner:
        if pos.hidden.requires_grad:
            torch.autograd.backward(pos.hidden, grad_h)
        for layer in inner:
            delta, x = capture.factors(layer.name)
            sketch.add(proj, layer.name, delta, x, dtype)
            align += layer.target.align(delta, x, dtype)
            sq += closed_form.squared_norms(delta, x, dtype)
            if visit is not None:
                visit(layer.name, slice(None), delta, x)
        capture.reset()
    return proj, align, sq, loss


class _Sink:
    """Per-batch results kept on the device, copied into host tensors in large blocks."""

    def __init__(self, *outs: torch.Tensor):
        self.outs, self.parts, self.size = outs, [], 0

    def put(self, idx: torch.Tensor, *values: torch.Tensor) -> None:
        self.parts.append((idx, values))
        self.size += sum(v.numel() * 4 for v in values)
        if self.size > _SINK_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        idx = torch.cat([p[0] for p in self.parts])
        for k, out in enumerate(self.outs):
            if out is not None:
                out[idx] = torch.cat([p[1][k] for p in self.parts]).cpu()
        self.parts, self.size = [], 0


def _split_on_oom(rows, run, split: bool = True) -> Iterator:
    """run(rows); on a GPU out-of-memory error, run each half instead (down to one document).
    `split=False`: raise instead (a visitor may already have seen part of the batch)."""
    try:
        yield rows, run(rows)
    except torch.cuda.OutOfMemoryError:
        if len(rows) == 1 or not split:
            raise
        torch.cuda.empty_cache()
        half = len(rows) // 2
        yield from _split_on_oom(rows[:half], run)
        yield from _split_on_oom(rows[half:], run)


def extract(
    framing: Framing,
    path: Interpolation,
    tokens: Tokens,
    labels: torch.Tensor | None,
    layers: LayerSet,
    sketch: Sketch,
    alphas: list[float],
    batch_tokens: int | None = None,
    max_docs: int | None = None,
    progress: bool = True,
    visit: Callable[[int, np.ndarray], Visit] | None = None,
) -> Gradients:
    """Closed-form / captured gradients of every document at every checkpoint α.

    `labels` are the autolabels (None for `lm`, whose targets are the next tokens).
    `visit(j, rows)` returns the visitor of checkpoint j's batch of corpus rows `rows`; with
    one, a batch that runs out of GPU memory is an error, not split (it was partly seen)."""
    base = path.base
    device = next(base.parameters()).device
    n, p = len(tokens), len(alphas)
    budget = batch_tokens or auto_batch_tokens(base, bool(layers.inner))
    plan = plan_batches(tokens.lengths, budget, max_docs)
    pad = framing.tokenizer.pad_token_id
    grads = torch.zeros(p, n, sketch.dim)
    align, sqnorm = torch.zeros(p, n), torch.zeros(p, n)
    base_loss = torch.zeros(n) if 0.0 in alphas else None
    bar = tqdm(total=n * p, desc=f"gradients at {p} checkpoint(s)", disable=not progress, unit="doc")
    for j, alpha in enumerate(alphas):
        with path.at(alpha) as model:
            framing.verify(model, collate(tokens, plan[0], pad, device))
            capture = Capture(model, [la.name for la in layers.inner],
                              {la.name: la.transposed for la in layers.inner},
                              {la.name: la.bias for la in layers.inner})
            sink = _Sink(grads[j], align[j], sqnorm[j], base_loss if alpha == 0.0 else None)

            def run(rows, model=model, capture=capture, j=j):
                batch = collate(tokens, rows, pad, device)
                y = None if labels is None else labels[torch.from_numpy(rows)]
                seen = None if visit is None else visit(j, rows)
                return batch_gradients(framing, model, batch, y, layers, sketch, capture, seen)

            with capture.active():
                for rows in plan:
                    for part, out in _split_on_oom(rows, run, split=visit is None):
                        sink.put(torch.from_numpy(part), *out)
                        bar.update(len(part))
            sink.flush()
    bar.close()
    return Gradients(
        grads=grads, align=align, sqnorm=sqnorm, target=sketch.target(layers.targets()),
        target_norm=layers.target_norm(), alphas=list(alphas), base_loss=base_loss,
        projector={**sketch.describe(), "batch_tokens": budget},
    )
