"""One fixed training recipe, used for every retraining (strategies, oracle, random) and
for building demo checkpoints: no early stopping, no peeking at any test set. The recipe
trains every weight, or only a fresh LoRA adapter (`Lora`) with everything else frozen."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from ..framings import Framing
from ..framings.tokens import collate


@dataclass(frozen=True)
class Lora:
    """A fresh PEFT LoRA adapter on `targets` (module name suffixes): ΔW = (alpha/r)·B A, no
    bias, no dropout, no module saved in full, so the head and every other weight stay frozen."""

    r: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("query", "value")

    def config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, target_modules=list(self.targets),
                          lora_dropout=0.0, bias="none")

    def to_dict(self) -> dict:
        return {"r": self.r, "alpha": self.alpha, "targets": list(self.targets)}


def adapt(model: PreTrainedModel, lora: Lora, seed: int = 0):
    """Inject a fresh LoRA adapter into `model` in place (its forward now goes through it) and
    freeze every other weight; returns the PeftModel, which saves the adapter folder. A's
    random init is seeded by `seed` (B starts at zero: the model is unchanged until trained)."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    # No task_type: PEFT's sequence-classification wrapper would train the head in full
    # (modules_to_save), and the head is meant to stay as θ0 has it.
    return get_peft_model(model, lora.config())


def has_adapter(model: torch.nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def _recipe_dict(recipe: Recipe | Schedule) -> dict:
    """The recipe's fields; `lora` only when set, so the fingerprints of full fine-tuning
    results stay what they were."""
    d = asdict(recipe)
    del d["lora"]
    return d if recipe.lora is None else d | {"lora": recipe.lora.to_dict()}


@dataclass
class Recipe:
    """AdamW with linear warm-up and decay over a fixed number of steps; with `lora`, of a
    fresh LoRA adapter only."""

    steps: int = 200
    lr: float = 5e-5
    batch_size: int = 16
    weight_decay: float = 0.0
    warmup: float = 0.1  # fraction of steps
    seed: int = 0
    lora: Lora | None = None

    def to_dict(self) -> dict:
        return _recipe_dict(self)


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
    lora: Lora | None = None

    def steps(self, k: int) -> int:
        return max(self.min_steps, math.ceil(self.epochs * k / self.batch_size))

    def recipe(self, k: int, seed: int = 0) -> Recipe:
        return Recipe(steps=self.steps(k), lr=self.lr, batch_size=self.batch_size,
                      weight_decay=self.weight_decay, warmup=self.warmup, seed=seed,
                      lora=self.lora)

    def scaled(self, factor: float) -> Schedule:
        """The same recipe with `factor` times the step budget (the recipe check)."""
        return replace(self, min_steps=max(1, round(self.min_steps * factor)),
                       epochs=self.epochs * factor)

    def to_dict(self) -> dict:
        return _recipe_dict(self)


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
    `labels` are class indices for classification framings, None for `lm`. With `recipe.lora`
    only a LoRA adapter trains: a fresh one is injected into `model` (in place, left unmerged)
    unless it already carries one (`adapt`, to keep the PeftModel that saves it).
    """
    if len(texts) == 0:
        raise ValueError("nothing to train on")
    if recipe.lora is not None and not has_adapter(model):
        adapt(model, recipe.lora, recipe.seed)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)  # dropout
    y_all = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
    tokens = framing.tokenize(texts)  # once per run, not once per step
    params = [p for p in model.parameters() if p.requires_grad]
    # Fused: one kernel over every tensor. On a CPU the default (foreach) step over
    # all-MiniLM-L6-v2's 22.7M parameters cost 0.97 s against 0.10 s fused, a third of a step.
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay,
                            fused=fused or None)
    sched = get_linear_schedule_with_warmup(opt, int(recipe.warmup * recipe.steps), recipe.steps)
    model.train()
    order: list[int] = []
    log = TrainLog()
    bar = tqdm(range(recipe.steps), desc="train", disable=not progress, unit="step")
    for _ in bar:
        if len(order) < recipe.batch_size:
            order += torch.randperm(len(texts), generator=gen).tolist()
        idx, order = order[: recipe.batch_size], order[recipe.batch_size :]
        batch = collate(tokens, np.asarray(idx), framing.tokenizer.pad_token_id, device)
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
