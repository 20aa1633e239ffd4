"""`select`: corpus → labels → gradients → selection, as one call."""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from . import output
from .checkpoints import CheckpointPair, load_pair
from .config import (
    STRATEGIES,
    CorpusConfig,
    GradientConfig,
    ModelConfig,
    SelectConfig,
    SelectionConfig,
    UserError,
)
from .corpus import load_corpus
from .framings import Framing, make_framing
from .gradients import Gradients, checkpoint_alphas, extract, make_projector
from .labels import score_documents
from .selection import Selection, needs_gradients, run_strategy


@dataclass
class SelectResult:
    """Everything a selection run produced, in memory."""

    config: SelectConfig
    texts: list[str]
    task: str
    label_names: list[str] | None
    labels: torch.Tensor | None  # (N,) autolabels
    loss_finetuned: torch.Tensor  # (N,)
    loss_base: torch.Tensor | None  # (N,)
    gradients: Gradients | None
    selections: dict[str, Selection]
    info: dict = field(default_factory=dict)  # resolved options and timings for the manifest

    def selected_texts(self, strategy: str) -> list[str]:
        return [self.texts[i] for i in self.selections[strategy].indices]


def make_config(**kwargs) -> SelectConfig:
    """Build a SelectConfig from flat keyword arguments (base=..., corpus=..., k=..., ...)."""
    parts = {"model": ModelConfig, "corpus": CorpusConfig, "gradients": GradientConfig,
             "selection": SelectionConfig}
    aliases = {"corpus": "path"}
    values: dict[str, dict] = {name: {} for name in parts}
    top = {}
    for key, value in kwargs.items():
        key = aliases.get(key, key)
        owners = [n for n, cls in parts.items() if key in {f.name for f in dataclasses.fields(cls)}]
        if key in ("out", "overwrite"):
            top[key] = value
        elif not owners:
            raise TypeError(f"unknown option {key!r}")
        for owner in owners:  # `seed` belongs to both gradients and selection
            values[owner][key] = value
    return SelectConfig(**{n: parts[n](**values[n]) for n in parts}, **top)


class _Clock:
    def __init__(self):
        self.stages: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        yield
        self.stages[stage] = round(time.perf_counter() - start, 3)


def select(cfg: SelectConfig | None = None, progress: bool = True, **kwargs) -> SelectResult:
    """Run SELECT and the requested baselines; write the output folder when cfg.out is set.

    Pass a SelectConfig, or flat keywords: `select(base=..., finetuned=..., corpus=..., k=100)`.
    """
    cfg = cfg or make_config(**kwargs)
    _check_options(cfg)
    if cfg.out:
        output.check_destination(cfg.out, cfg.overwrite)
    clock = _Clock()
    with clock("load corpus"):
        corpus = load_corpus(cfg.corpus.path, cfg.corpus.text_column, cfg.corpus.limit)
        texts = list(corpus[cfg.corpus.text_column])
    if cfg.selection.k > len(texts):
        raise UserError(f"--k {cfg.selection.k} is larger than the corpus ({len(texts)} documents)")
    with clock("load checkpoints"):
        pair = load_pair(cfg.model, seed=cfg.gradients.seed)
        framing = make_framing(pair.task, pair.tokenizer, cfg.corpus.max_length, cfg.model)
    with clock("tokenise"):
        lengths = _check_lengths(framing, texts)
    info = {"task": pair.task, "documents": len(texts), "base_missing_parameters": pair.base_missing,
            "last_layer": framing.last_layer_name(pair.base), "device": str(pair.device)}
    info["head_init"] = _init_head(cfg, pair, framing)
    target = framing.last_layer(pair.base) - framing.last_layer(pair.finetuned)
    if not torch.any(target != 0):
        raise UserError(
            f"the last layer ({info['last_layer']}) is identical in both checkpoints (a frozen head, "
            "or an adapter that left it alone); SELECT needs a last layer that changed"
        )
    batch = cfg.gradients.batch_size
    with clock("autolabel"):
        labels, loss_ft = score_documents(framing, pair.finetuned, texts, batch, lengths=lengths,
                                          progress=progress,
                                          desc="autolabel" if framing.autolabel else "loss at θf")
    alphas = checkpoint_alphas(cfg.gradients.checkpoints, cfg.gradients.grad_at)
    info["alphas"] = alphas
    grads = None
    if needs_gradients(cfg.selection.strategies):
        projector = make_projector(*target.shape, cfg.gradients.projection,
                                   cfg.gradients.projection_dim, cfg.gradients.exact_max,
                                   cfg.gradients.seed, pair.device)
        with clock("gradients"):
            grads = extract(framing, pair.base, pair.finetuned, texts, labels, projector, target,
                            alphas, batch, lengths, progress)
        info["projection"] = grads.projector
    loss_base = grads.base_loss if grads is not None else None
    if loss_base is None and "loss-diff" in cfg.selection.strategies:
        with clock("loss at θ0"):
            _, loss_base = score_documents(framing, pair.base, texts, batch, labels, lengths,
                                           progress, desc="loss at θ0")
    selections = {}
    for name in cfg.selection.strategies:
        with clock(f"select:{name}"):
            selections[name] = run_strategy(
                name, cfg.selection.k, grads, labels, loss_ft, loss_base,
                seed=cfg.selection.seed, reset_every=cfg.selection.reset_every, n=len(texts),
                progress=progress,
            )
    info["timings_s"] = clock.stages
    result = SelectResult(cfg, texts, pair.task, _label_names(pair, framing), labels, loss_ft,
                          loss_base, grads, selections, info)
    if cfg.out:
        output.write_run(result, cfg.out, cfg.overwrite)
    return result


def _check_options(cfg: SelectConfig) -> None:
    unknown = [s for s in cfg.selection.strategies if s not in STRATEGIES]
    if unknown:
        raise UserError(f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    if not cfg.selection.strategies:
        raise UserError("no strategy given")
    if cfg.selection.k < 1:
        raise UserError("--k must be at least 1")
    if cfg.gradients.checkpoints < 1:
        raise UserError("--checkpoints must be at least 1")


def _check_lengths(framing: Framing, texts: list[str]) -> list[int]:
    """Token counts (special tokens included); a UserError for a document with no content."""
    lengths = framing.token_counts(texts)
    content = framing.tokenizer(texts, add_special_tokens=False)["input_ids"]
    for i, (n, ids) in enumerate(zip(lengths, content)):
        if not ids or n < framing.min_tokens:
            raise UserError(
                f"corpus row {i} tokenises to {len(ids)} token(s) of text; {framing.name} needs "
                f"at least {max(1, framing.min_tokens)}: remove or lengthen it"
            )
    return lengths


def _init_head(cfg: SelectConfig, pair: CheckpointPair, framing: Framing) -> str | None:
    """classify-head: start θ0's head from the base checkpoint, or from zeros when the base
    has none (hub classifiers rarely publish the head they started from)."""
    if pair.task != "classify-head":
        return None
    head = framing.last_module(pair.base)
    head_name = framing.last_layer_name(pair.base)
    missing = any(m.startswith(head_name + ".") for m in pair.base_missing)
    mode = cfg.model.head_init
    if mode == "auto":
        mode = "zeros" if missing else "base"
    if mode == "base" and missing:
        raise UserError(
            f"the base checkpoint has no trained {head_name}; use --head-init zeros"
        )
    if mode == "zeros":
        with torch.no_grad():
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
    return mode


def _label_names(pair: CheckpointPair, framing: Framing) -> list[str] | None:
    if pair.task == "classify-tokens":
        return list(framing.labels)
    if pair.task == "classify-head":
        id2label = pair.finetuned.config.id2label
        return [str(id2label[i]) for i in range(pair.finetuned.config.num_labels)]
    return None
