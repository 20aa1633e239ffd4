"""A sequence classifier whose last layer is its final linear head (BERT-style encoders,
decoders with a `score` head)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from .base import Framing, Positions


class ClassifyHead(Framing):
    name = "classify-head"
    autolabel = True

    def last_module(self, model: PreTrainedModel) -> nn.Linear:
        # The head is the last linear layer producing num_labels outputs (BERT `classifier`,
        # RoBERTa `classifier.out_proj`, decoder `score`).
        heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
        heads = [m for m in heads if m.out_features == model.config.num_labels]
        if not heads:
            raise RuntimeError(f"no linear layer with {model.config.num_labels} outputs found")
        return heads[-1]

    def _pool(self, model: PreTrainedModel, batch: dict, h: torch.Tensor) -> torch.Tensor:
        if h.dim() == 2:
            return h
        # Decoder classifiers score every position and keep the rightmost non-pad one.
        ids = batch["input_ids"]
        non_pad = (ids != model.config.pad_token_id).int()
        last = (torch.arange(ids.shape[1], device=ids.device) * non_pad).argmax(-1)
        return h[torch.arange(len(h), device=h.device), last]

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> Positions:
        h = self._pool(model, batch, self.body(model, batch))
        w, b = self.head(model)
        return Positions(hidden=h.unsqueeze(1), weight=torch.ones(len(h), 1, device=h.device),
                         target=None, head_weight=w, head_bias=b)

    def model_logits(self, model, batch, pos):
        return model(**batch).logits.unsqueeze(1)
