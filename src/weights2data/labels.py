"""Autolabelling: every seed document gets the fine-tuned model's argmax class."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .framings import Framing


@torch.no_grad()
def score_documents(
    framing: Framing,
    model: PreTrainedModel,
    texts: list[str],
    batch_size: int,
    labels: torch.Tensor | None = None,
    lengths: list[int] | None = None,
    progress: bool = True,
    desc: str = "autolabel",
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Each document's loss under `model`, (N,), and its labels (N,).

    Classification framings without `labels` take the model's argmax as the label (that is
    autolabelling with θf); `lm` has no labels and returns None.
    """
    device = next(model.parameters()).device
    out = torch.full((len(texts),), -1, dtype=torch.long)
    losses = torch.zeros(len(texts))
    bar = tqdm(total=len(texts), desc=desc, disable=not progress, unit="doc")
    for idx, batch in framing.batches(texts, batch_size, device, lengths):
        pos = framing.forward(model, batch)
        if framing.autolabel:
            y = pos.logits.argmax(-1) if labels is None else labels[idx].to(device).unsqueeze(1)
            pos.target = y
            out[idx] = y[:, 0].cpu()
        losses[idx] = pos.loss().cpu()
        bar.update(len(idx))
    bar.close()
    return (out if framing.autolabel else None), losses
