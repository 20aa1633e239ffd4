"""Language modelling / SFT: next-token loss over every token, the LM head as last layer
(for tied embeddings, the shared embedding matrix)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from .base import Framing, Positions


class LanguageModel(Framing):
    name = "lm"
    autolabel = False
    min_tokens = 2  # one token to condition on, one to predict

    def last_module(self, model: PreTrainedModel):
        return model.get_output_embeddings()

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> Positions:
        head = self.last_module(model)
        out, h = self._capture_input(model, head, batch)
        # Position t predicts token t+1; a document's loss is the mean over its predictions.
        mask = batch["attention_mask"]
        weight = (mask[:, 1:] * mask[:, :-1]).float()
        weight = weight / weight.sum(-1, keepdim=True).clamp_min(1)
        h = self._with_bias(h[:, :-1], head)
        logits = out.logits[:, :-1].float()
        self._check_logits(model, h[:1, :4], logits[:1, :4])
        return Positions(hidden=h, logits=logits, weight=weight, target=batch["input_ids"][:, 1:])
