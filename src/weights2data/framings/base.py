"""What every task framing provides.

All three framings reduce to one shape of last-layer gradient: for document i,

    g_i = Σ_t w_t (softmax(z_t) − e_{y_t}) ⊗ h̃_t

with z_t = W h_t + b the logits of the last linear layer restricted to the rows that
matter (C classes, C label tokens, or the whole vocabulary), h̃_t = [h_t; 1] when the
layer has a bias, and w_t the loss weight of position t (one position for classification,
1/T over the T predicted tokens for language modelling).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Positions:
    """One batch at one checkpoint: everything the closed-form gradient needs."""

    hidden: torch.Tensor  # (B, T, H') last-layer inputs, with a trailing 1 when the layer has a bias
    logits: torch.Tensor  # (B, T, C) restricted logits, float32
    weight: torch.Tensor  # (B, T) loss weight per position, 0 at padding
    target: torch.Tensor | None  # (B, T) target class per position; None until autolabelled

    def loss(self, target: torch.Tensor | None = None) -> torch.Tensor:
        """Per-document weighted cross-entropy, (B,)."""
        y = self.target if target is None else target
        logp = torch.log_softmax(self.logits, dim=-1)
        nll = -logp.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return (nll * self.weight).sum(-1)


class Framing:
    """A task framing: which layer is 'last', how documents are batched, what the loss is."""

    name: str
    autolabel: bool  # classification framings label documents with θf's argmax

    min_tokens = 1  # a document needs this many tokens to carry a training signal

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._checked: set[int] = set()  # models whose logits we have verified once

    # -- the last layer -------------------------------------------------------------
    def last_module(self, model: PreTrainedModel) -> nn.Linear | nn.Embedding | nn.Module:
        raise NotImplementedError

    def rows(self) -> torch.Tensor | slice:
        """Rows of the last layer's weight that the restricted logits use."""
        return slice(None)

    def last_layer(self, model: PreTrainedModel) -> torch.Tensor:
        """The restricted last layer as one (C, H') matrix: [W | b] when there is a bias."""
        module = self.last_module(model)
        w = module.weight[self.rows()].detach().float()
        b = getattr(module, "bias", None)
        if b is not None:
            w = torch.cat([w, b[self.rows()].detach().float().unsqueeze(1)], dim=1)
        return w

    def last_layer_name(self, model: PreTrainedModel) -> str:
        module = self.last_module(model)
        return next(n for n, m in model.named_modules() if m is module)

    # -- batches --------------------------------------------------------------------
    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )

    def token_counts(self, texts: list[str]) -> list[int]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> Positions:
        raise NotImplementedError

    def batches(
        self, texts: list[str], batch_size: int, device: torch.device, lengths: list[int] | None = None
    ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """(row indices, encoded batch) in order of decreasing length, so padding stays small."""
        lengths = lengths if lengths is not None else self.token_counts(texts)
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.encode([texts[i] for i in idx])
            yield torch.tensor(idx), {k: v.to(device) for k, v in batch.items()}

    # -- helpers --------------------------------------------------------------------
    @staticmethod
    def _with_bias(h: torch.Tensor, module: nn.Module) -> torch.Tensor:
        h = h.float()
        if getattr(module, "bias", None) is None:
            return h
        return torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)

    @staticmethod
    def _capture_input(model: PreTrainedModel, module: nn.Module, batch: dict) -> tuple:
        """Run the model and return (its output, the input of `module`)."""
        seen: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        try:
            out = model(**batch)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise RuntimeError(f"expected the last layer to run once per forward, ran {len(seen)}x")
        return out, seen[0]

    def _check_logits(
        self, model: PreTrainedModel, h: torch.Tensor, model_logits: torch.Tensor
    ) -> None:
        """The closed form is only right if h reproduces the model's own logits: check once."""
        if id(model) in self._checked:
            return
        self._checked.add(id(model))
        mine = h.float() @ self.last_layer(model).T
        rel = 1e-3 if model_logits.dtype == torch.float32 else 3e-2
        tol = rel * (1 + model_logits.float().abs().max().item())
        if (mine - model_logits.float()).abs().max().item() > tol:
            raise RuntimeError(
                f"{self.name}: logits recomputed from the captured hidden state differ from the model's; "
                "this architecture's last layer is not a plain linear map on that input"
            )
