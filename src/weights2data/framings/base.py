"""What every task framing provides.

All three framings reduce to one shape of last-layer gradient: for document i,

    g_i = Σ_t w_t (softmax(z_t) − e_{y_t}) ⊗ h̃_t

with z_t = W h_t + b the logits of the last linear layer restricted to the rows that
matter (C classes, C label tokens, or the whole vocabulary), h̃_t = [h_t; 1] when the
layer has a bias, and w_t the loss weight of position t (one position for classification,
1/T over the T predicted tokens for language modelling).

A forward pass runs the model body only: a pre-hook on the last layer captures its input and
stops the model there, and the framing applies the rows it reads itself, at the positions it
reads. A label-token framing on a 128k-vocabulary LM so computes C logits per document
instead of 128k per token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import tokens as tok
from .tokens import Tokens

LOGIT_BYTES = 1 << 28  # float32 logits formed at once (256 MiB), whatever the vocabulary


@dataclass
class Positions:
    """One batch at one checkpoint: everything the closed-form gradient needs."""

    hidden: torch.Tensor  # (B, T, H) inputs of the last layer at the positions the loss reads
    weight: torch.Tensor  # (B, T) float32 loss weight per position, 0 at padding
    target: torch.Tensor | None  # (B, T) target class per position; None until autolabelled
    head_weight: torch.Tensor  # (C, H) the rows of the last layer the framing reads
    head_bias: torch.Tensor | None  # (C,)

    def inputs(self) -> torch.Tensor:
        """h̃ = [h; 1] when the layer has a bias, else h; (B, T, H')."""
        h = self.hidden
        if self.head_bias is None:
            return h
        return torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)

    def logits(self, rows: slice = slice(None)) -> torch.Tensor:
        """Restricted logits of documents `rows`, float32, (b, T, C)."""
        z = (self.hidden[rows] @ self.head_weight.T).float()
        return z if self.head_bias is None else z + self.head_bias.float()

    def chunks(self, budget: int = LOGIT_BYTES) -> Iterator[slice]:
        """Slices of documents whose float32 logits take at most `budget` bytes (one
        document at the least), so peak memory does not grow with the vocabulary."""
        b, t = self.weight.shape
        per_doc = max(1, t * self.head_weight.shape[0] * 4)
        step = max(1, budget // per_doc)
        for start in range(0, b, step):
            yield slice(start, min(b, start + step))

    def loss(self, target: torch.Tensor | None = None) -> torch.Tensor:
        """Per-document weighted cross-entropy, (B,); differentiable (training uses it)."""
        y = self.target if target is None else target
        logp = torch.log_softmax(self.logits(), dim=-1)
        nll = -logp.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return (nll * self.weight).sum(-1)


class _Stop(Exception):
    """Raised by the pre-hook on the last layer: the body's output is all we need."""

    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


class Framing:
    """A task framing: which layer is 'last', how documents are tokenised, what the loss is."""

    name: str
    autolabel: bool  # classification framings label documents with θf's argmax

    min_tokens = 1  # a document needs this many tokens to carry a training signal

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    # -- the last layer -------------------------------------------------------------
    def last_module(self, model: PreTrainedModel) -> nn.Module:
        raise NotImplementedError

    def rows(self) -> torch.Tensor | slice:
        """Rows of the last layer's weight that the restricted logits use."""
        return slice(None)

    def head(self, model: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, b) of the last layer restricted to the framing's rows, as the model holds them
        (differentiable: training goes through them)."""
        module = self.last_module(model)
        w = module.weight[self._rows_on(module.weight.device)]
        b = getattr(module, "bias", None)
        return w, (None if b is None else b[self._rows_on(b.device)])

    def _rows_on(self, device):
        r = self.rows()
        return r.to(device) if isinstance(r, torch.Tensor) else r

    def last_layer(self, model: PreTrainedModel) -> torch.Tensor:
        """The restricted last layer as one float32 (C, H') matrix: [W | b] when there is a bias."""
        w, b = self.head(model)
        w = w.detach().float()
        if b is not None:
            w = torch.cat([w, b.detach().float().unsqueeze(1)], dim=1)
        return w

    def last_layer_name(self, model: PreTrainedModel) -> str:
        module = self.last_module(model)
        return next(n for n, m in model.named_modules() if m is module)

    # -- tokens and batches ---------------------------------------------------------
    def tokenize(self, texts: list[str]) -> Tokens:
        """Every document's token ids, truncated to max_length (special tokens included)."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        n_special = len(self.tokenizer("a")["input_ids"]) - len(
            self.tokenizer("a", add_special_tokens=False)["input_ids"])
        return Tokens.from_lists(ids, [max(0, len(x) - n_special) for x in ids])

    def token_counts(self, texts: list[str]) -> list[int]:
        return self.tokenize(texts).lengths.tolist()

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """A padded batch of these documents, on the CPU, in this order."""
        t = self.tokenize(texts)
        return tok.collate(t, torch.arange(len(texts)).numpy(), self.tokenizer.pad_token_id,
                           torch.device("cpu"))

    def batches(
        self,
        texts: list[str] | Tokens,
        device: torch.device,
        batch_tokens: int | None = None,
        max_docs: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """(row indices, padded batch), longest documents first, at most `batch_tokens`
        padded tokens (and `max_docs` documents) per batch."""
        tokens = texts if isinstance(texts, Tokens) else self.tokenize(texts)
        budget = batch_tokens or tok.DEFAULT_CPU_BATCH_TOKENS
        return tok.batches(tokens, self.tokenizer.pad_token_id, torch.device(device), budget, max_docs)

    # -- the forward pass -----------------------------------------------------------
    def body(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The input of the last layer at every position, (B, T, H) (or (B, H) for pooled
        encoders); the last layer itself and anything after it never run."""
        module = self.last_module(model)

        def stop(m, args):
            raise _Stop(args[0])

        handle = module.register_forward_pre_hook(stop)
        try:
            model(**batch)
        except _Stop as s:
            return s.hidden
        finally:
            handle.remove()
        raise RuntimeError(f"{self.name}: the model never called its last layer")

    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> Positions:
        raise NotImplementedError

    def model_logits(self, model: PreTrainedModel, batch: dict[str, torch.Tensor],
                     pos: Positions) -> torch.Tensor:
        """The model's own logits at the positions and rows `pos` reads, (B, T, C)."""
        raise NotImplementedError

    @torch.no_grad()
    def verify(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> None:
        """The closed form is only right if the captured input reproduces the model's own
        logits: compare on a few documents, with a tolerance that follows the model's dtype."""
        batch = {k: v[:4] for k, v in batch.items()}
        pos = self.forward(model, batch)
        mine = pos.logits()
        theirs = self.model_logits(model, batch, pos).float()
        dtype = pos.head_weight.dtype
        rel = {torch.float32: 1e-3, torch.float64: 1e-6}.get(dtype, 3e-2)  # bf16/fp16: ~2^-8
        tol = rel * (1 + theirs.abs().max().item())
        keep = pos.weight > 0
        worst = (mine - theirs).abs()[keep].max().item() if keep.any() else 0.0
        if worst > tol:
            raise RuntimeError(
                f"{self.name}: logits recomputed from the captured hidden state differ from the "
                f"model's by {worst:.3g} (tolerance {tol:.3g} in {dtype}); this architecture's last "
                "layer is not a plain linear map on that input"
            )
