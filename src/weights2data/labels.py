"""Autolabelling: every seed document gets the fine-tuned model's argmax class."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .framings import Framing, Tokens
from .gradients.closed_form import residuals_and_loss


@torch.no_grad()
def score_documents(
    framing: Framing,
    model: PreTrainedModel,
    texts: list[str] | Tokens,
    batch_size: int | None = None,
    labels: torch.Tensor | None = None,
    progress: bool = True,
    desc: str = "autolabel",
    batch_tokens: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Each document's loss under `model`, (N,), and its labels (N,).

    Classification framings without `labels` take the model's argmax as the label (that is
    autolabelling with θf); `lm` has no labels and returns None. `texts` may be tokenised
    already; batches hold at most `batch_tokens` padded tokens
    and `batch_size` documents.
    """
    device = next(model.parameters()).device
    tokens = texts if isinstance(texts, Tokens) else framing.tokenize(texts)
    n = len(tokens)
    out = torch.full((n,), -1, dtype=torch.long)
    losses = torch.zeros(n)
    bar = tqdm(total=n, desc=desc, disable=not progress, unit="doc")
    parts = []
    for k, (idx, batch) in enumerate(framing.batches(tokens, device, batch_tokens, batch_size)):
        if k == 0:
            framing.verify(model, batch)
        pos = framing.forward(model, batch)
        if framing.autolabel:
            y = pos.logits().argmax(-1) if labels is None else labels[idx].to(device).unsqueeze(1)
        else:
            y = pos.target
        loss = torch.empty(len(idx), device=device)
        for s in pos.chunks():
            loss[s] = residuals_and_loss(pos.logits(s), pos.weight[s], y[s])[1]
        parts.append((idx, y[:, 0] if framing.autolabel else None, loss))
        bar.update(len(idx))
    bar.close()
    for idx, y, loss in parts:  # one copy back at the end, not one per batch
        losses[idx] = loss.cpu()
        if y is not None:
            out[idx] = y.cpu()
    return (out if framing.autolabel else None), losses
