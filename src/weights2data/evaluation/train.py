"""One fixed training recipe, used for every retraining (strategies, oracle, random) and
for building demo checkpoints: no early stopping, no peeking at any test set."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field, replace

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


@dataclass
class Schedule:
    """The retraining recipe for a training set of any size K:
    steps = max(min_steps, ⌈epochs · K / batch⌉). The floor keeps small selections from being
    judged by how fast they can be fitted in a few steps; above it the budget grows with K."""

    min_steps: int = 100
    epochs: float = 3.0
    lr: float = 1e-4
    batch_size: int = 16
    weight_decay: float = 0.0
    warmup: float = 0.1

    def steps(self, k: int) -> int:
        return max(self.min_steps, math.ceil(self.epochs * k / self.batch_size))

    def recipe(self, k: int, seed: int = 0) -> Recipe:
        return Recipe(steps=self.steps(k), lr=self.lr, batch_size=self.batch_size,
                      weight_decay=self.weight_decay, warmup=self.warmup, seed=seed)

    def scaled(self, factor: float) -> Schedule:
        """The same recipe with `factor` times the step budget (the recipe check)."""
        return replace(self, min_steps=max(1, round(self.min_steps * factor)),
                       epochs=self.epochs * factor)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainLog:
    """The training loss of every step of one run."""

    losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        """Mean loss over the last tenth of the steps (at least one): where the run ended up,
        with less batch-to-batch noise than the last step alone."""
        if not self.losses:
            return math.nan
        tail = max(1, len(self.losses) // 10)
        return statistics.fmean(self.losses[-tail:])


def train(
    model: PreTrainedModel,
    framing: Framing,
    texts: list[str],
    labels: list[int] | torch.Tensor | None,
    recipe: Recipe,
    progress: bool = True,
) -> TrainLog:
    """Train `model` in place on (texts, labels) with the framing's own loss; return the
    per-step training losses.

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
    log = TrainLog()
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
        log.losses.append(loss.item())
        bar.set_postfix(loss=f"{log.losses[-1]:.3f}", refresh=False)
    model.eval()
    return log
