"""A causal LM that answers with a label word after the text (the paper's framing):
loss at the label position only, logits restricted to the C label tokens."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config import UserError
from .base import Framing, Positions


def label_token_ids(tokenizer: PreTrainedTokenizerBase, labels: list[str]) -> list[int]:
    """The single token of ' word' for each label word; a UserError otherwise."""
    if not labels or len(labels) < 2:
        raise UserError("classify-tokens needs at least two label words (--labels)")
    ids = []
    for word in labels:
        toks = tokenizer.encode(" " + word.strip(), add_special_tokens=False)
        if len(toks) != 1:
            pieces = tokenizer.convert_ids_to_tokens(toks)
            raise UserError(
                f"label word {word!r} is not a single token (' {word.strip()}' -> {pieces}); "
                "choose label words the tokenizer keeps whole"
            )
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise UserError(f"label words {labels} map to repeated tokens")
    return ids


class ClassifyTokens(Framing):
    name = "classify-tokens"
    autolabel = True

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        labels: list[str],
        template: str = "{text}",
    ):
        super().__init__(tokenizer, max_length)
        if "{text}" not in template:
            raise UserError("--prompt-template must contain {text}")
        self.labels = labels
        self.template = template
        self.label_ids = torch.tensor(label_token_ids(tokenizer, labels))

    def last_module(self, model: PreTrainedModel):
        return model.get_output_embeddings()

    def rows(self) -> torch.Tensor:
        return self.label_ids

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return super().encode([self.template.format(text=t) for t in texts])

    def token_counts(self, texts: list[str]) -> list[int]:
        return super().token_counts([self.template.format(text=t) for t in texts])

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> Positions:
        head = self.last_module(model)
        out, h = self._capture_input(model, head, batch)
        # The label word follows the last text token: its logits are read there, not one later.
        rows = torch.arange(len(h), device=h.device)
        last = batch["attention_mask"].sum(-1) - 1
        h = self._with_bias(h[rows, last], head)
        logits = out.logits[rows, last][:, self.label_ids.to(h.device)].float()
        self._check_logits(model, h, logits)
        return Positions(
            hidden=h.unsqueeze(1),
            logits=logits.unsqueeze(1),
            weight=torch.ones(len(h), 1, device=h.device),
            target=None,
        )
