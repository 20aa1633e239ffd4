"""One fixed training recipe, used for every retraining (strategies, oracle, random) and
for building demo checkpoints: no early stopping, no peeking at any test set."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from ..framings import Framing


@dataclass
class Recipe:
    """AdamW with linear warm-up and decay over a fixed number of steps."""

    steps: int = 200
    lr: float = 5e-5
    batch_size: int = 16
    weight_decay: float = 0.0
    warmup: float = 0.1  # fraction of steps
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def train(
    model: PreTrainedModel,
    framing: Framing,
    texts: list[str],
    labels: list[int] | torch.Tensor | None,
    recipe: Recipe,
    progress: bool = True,
) -> PreTrainedModel:
    """Train `model` in place on (texts, labels) with the framing's own loss.

    Batches walk seeded permutations of the data, epoch after epoch, until `steps`.
    `labels` are class indices for classification framings, None for `lm`.
    """
    if len(texts) == 0:
        raise ValueError("nothing to train on")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)  # dropout
    y_all = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(recipe.warmup * recipe.steps), recipe.steps)
    model.train()
    order: list[int] = []
    bar = tqdm(range(recipe.steps), desc="train", disable=not progress, unit="step")
    for _ in bar:
        if len(order) < recipe.batch_size:
            order += torch.randperm(len(texts), generator=gen).tolist()
        idx, order = order[: recipe.batch_size], order[recipe.batch_size :]
        batch = {k: v.to(device) for k, v in framing.encode([texts[i] for i in idx]).items()}
        pos = framing.forward(model, batch)
        target = None if y_all is None else y_all[idx].to(device).unsqueeze(1)
        loss = pos.loss(target).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError("training loss is not finite; lower the learning rate")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return model
