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
        h = self.body(model, batch)
        # Position t predicts token t+1; a document's loss is the mean over its predictions.
        mask = batch["attention_mask"]
        weight = (mask[:, 1:] * mask[:, :-1]).float()
        weight = weight / weight.sum(-1, keepdim=True).clamp_min(1)
        w, b = self.head(model)
        return Positions(hidden=h[:, :-1], weight=weight, target=batch["input_ids"][:, 1:],
                         head_weight=w, head_bias=b)

    def model_logits(self, model, batch, pos):
        return model(**batch).logits[:, :-1]
