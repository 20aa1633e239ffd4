"""A causal LM that answers with a label word after the text (the paper's framing):
loss at the label position only, logits restricted to the C label tokens."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config import UserError
from .base import Framing, Positions
from .tokens import Tokens


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


def leading_specials(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before a text (a BOS), never those after it (an
    EOS): the label word must follow the text itself."""
    probe = "label"
    full = tokenizer(probe)["input_ids"]
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k]
    return []


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
        self.lead = leading_specials(tokenizer)
        frame = len(self.lead) + len(self._ids(template.replace("{text}", "", 1)))
        if frame >= max_length:
            raise UserError(f"--prompt-template takes {frame} tokens, leaving none of "
                            f"--max-length {max_length} for the text; shorten it or raise --max-length")

    def last_module(self, model: PreTrainedModel):
        return model.get_output_embeddings()

    def rows(self) -> torch.Tensor:
        return self.label_ids

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prompt(self, text: str) -> list[int]:
        return self.lead + self._ids(self.template.format(text=text))

    def _cut(self, text: str, n: int) -> str:
        """The first n tokens of `text`, as text."""
        try:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return text[: enc["offset_mapping"][n - 1][1]] if n > 0 else ""
        except (NotImplementedError, ValueError, KeyError):  # slow tokenizers: no offsets
            return self.tokenizer.decode(self._ids(text)[:n])

    def tokenize(self, texts: list[str]) -> Tokens:
        """Prompts that always end with the template's suffix: a text too long for
        max_length loses its own end, never the template's."""
        prompts = self.tokenizer([self.template.format(text=t) for t in texts],
                                 add_special_tokens=False)["input_ids"]
        counts = [len(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        ids, content = [], []
        for text, prompt, n in zip(texts, prompts, counts):
            prompt = self.lead + prompt
            keep = n
            while len(prompt) > self.max_length and keep > 0:
                # Cut the text by what overflows; token boundaries may shift by one or two
                # where text and template meet, so repeat until it fits.
                keep = min(keep - 1, keep - (len(prompt) - self.max_length))
                prompt = self._prompt(self._cut(text, max(keep, 0)))
            ids.append(prompt)
            content.append(max(keep, 0))
        return Tokens.from_lists(ids, content)

    def _last(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(len(batch["input_ids"]), device=batch["input_ids"].device)
        return rows, batch["attention_mask"].sum(-1) - 1

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> Positions:
        h = self.body(model, batch)
        # The label word follows the last text token: its logits are read there, not one later.
        rows, last = self._last(batch)
        w, b = self.head(model)
        return Positions(hidden=h[rows, last].unsqueeze(1),
                         weight=torch.ones(len(rows), 1, device=h.device),
                         target=None, head_weight=w, head_bias=b)

    def model_logits(self, model, batch, pos):
        rows, last = self._last(batch)
        logits = model(**batch).logits[rows, last]
        return logits[:, self.label_ids.to(logits.device)].unsqueeze(1)
