"""Metrics that judge a selection: the task metric of a retrained model (accuracy or
perplexity), the OT distance to the true data, label/source distributions and leakage."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from ..framings import Framing
from ..labels import score_documents

SINKHORN_ABOVE = 5_000  # exact EMD up to this many documents per side, Sinkhorn beyond


def accuracy(
    framing: Framing,
    model: PreTrainedModel,
    texts: list[str],
    labels: Sequence[int],
    batch_size: int = 32,
    progress: bool = False,
) -> float:
    """Share of documents whose argmax class is the true label (classification framings)."""
    if not framing.autolabel:
        raise ValueError(f"accuracy needs a classification framing, not {framing.name}")
    predicted, _ = score_documents(framing, model, texts, batch_size, progress=progress,
                                   desc="accuracy")
    truth = torch.as_tensor(list(labels), dtype=torch.long)
    return (predicted == truth).float().mean().item()


def perplexity(
    framing: Framing,
    model: PreTrainedModel,
    texts: list[str],
    batch_size: int = 16,
    progress: bool = False,
) -> float:
    """exp of the mean next-token loss over all predicted tokens (token-weighted, not a mean
    of per-document perplexities), at the framing's max length."""
    if framing.autolabel:
        raise ValueError(f"perplexity needs the lm framing, not {framing.name}")
    tokens = framing.tokenize(texts)  # once: the same ids give the losses and their weights
    _, losses = score_documents(framing, model, tokens, batch_size, progress=progress,
                                desc="perplexity")
    # The lm framing averages each document over its len-1 predictions: undo that.
    counts = torch.from_numpy(tokens.lengths - 1).clamp(min=0).double()
    mean_nll = float((losses.double() * counts).sum() / counts.sum())
    return math.exp(mean_nll) if mean_nll < 700 else math.inf  # exp overflows a float beyond


class SentenceEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it (mean pooling over the attention
    mask, then L2 normalisation), with plain transformers."""

    def __init__(self, folder: str | Path | None = None, max_length: int = 256,
                 device: str | torch.device = "cpu"):
        if folder is None:
            from ..demo.data import minilm_dir

            folder = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.max_length = max_length
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        # Longest first keeps padding small; rows go back to their places.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in tqdm(range(0, len(order), batch_size), desc="embed", disable=not progress):
            idx = order[start : start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], truncation=True,
                                 max_length=self.max_length, padding=True, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out


def ot_distance(
    a: np.ndarray, b: np.ndarray, sinkhorn_above: int = SINKHORN_ABOVE, reg: float = 0.05
) -> float:
    """Optimal-transport cost between two embedded sets: uniform weights, squared Euclidean
    cost, exact EMD (ot.emd2) unless either side has more than `sinkhorn_above` rows."""
    import ot  # POT only where it is used: selection must not need it

    if len(a) == 0 or len(b) == 0:
        raise ValueError("OT distance needs two non-empty sets")
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cost = ot.dist(a64, b64, metric="sqeuclidean")
    wa, wb = np.full(len(a64), 1 / len(a64)), np.full(len(b64), 1 / len(b64))
    if max(len(a64), len(b64)) > sinkhorn_above:
        return float(ot.sinkhorn2(wa, wb, cost, reg))
    return float(ot.emd2(wa, wb, cost))


def distribution(values: Sequence, names: Sequence[str] | None = None) -> dict[str, float]:
    """Share of each value, sorted by name; integer values are mapped through `names`, and
    every name appears (with 0.0) so distributions line up across selections."""
    vals = [names[v] if names is not None and isinstance(v, (int, np.integer)) else v
            for v in values]
    counts = Counter(str(v) for v in vals)
    keys = sorted(set(counts) | {str(n) for n in (names or [])})
    total = max(len(vals), 1)
    return {k: counts.get(k, 0) / total for k in keys}


def leakage(selected: Sequence[int], leaked: Sequence[int]) -> dict[str, float]:
    """Precision (share of the selection that is leaked true data) and recall (share of the
    leaked documents that were selected)."""
    sel, true = set(selected), set(leaked)
    hits = len(sel & true)
    return {
        "precision": hits / len(sel) if sel else 0.0,
        "recall": hits / len(true) if true else 0.0,
        "hits": hits,
    }
