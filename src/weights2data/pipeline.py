"""`select`: corpus → labels → gradients → selection, as one call."""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from . import distributed, output, store
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
from .selection import Selection, confident_rows, needs_gradients, run_strategy


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


def select(cfg: SelectConfig | None = None, progress: bool = True, **kwargs) -> SelectResult | None:
    """Run SELECT and the requested baselines; write the output folder when cfg.out is set.

    Pass a SelectConfig, or flat keywords: `select(base=..., finetuned=..., corpus=..., k=100)`.
    With `store=DIR` every pass goes to a resumable on-disk store (store.py). Under torchrun
    the ranks share the store's shards and only rank 0 selects; the others return None.
    """
    cfg = cfg or make_config(**kwargs)
    _check_options(cfg)
    world, device = distributed.init(cfg.model.device)
    if world.size > 1 and not cfg.gradients.store:
        raise UserError("several processes (torchrun) need --store: each rank writes its own shards")
    cfg.model.device = device
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
    if cfg.gradients.store:
        stored = _run_store(cfg, pair, framing, texts, lengths, target, info, world, clock, progress)
        if stored is None:
            return None
        labels, loss_ft, loss_base, grads = stored
        return _finish(cfg, texts, pair, framing, labels, loss_ft, loss_base, grads, info, clock,
                       progress)
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
    return _finish(cfg, texts, pair, framing, labels, loss_ft, loss_base, grads, info, clock,
                   progress)


def _finish(cfg, texts, pair, framing, labels, loss_ft, loss_base, grads, info, clock, progress):
    """Run every strategy and write the output folder."""
    eligible = None
    if cfg.selection.confidence_quantile > 0:
        if labels is None:
            raise UserError("--confidence-quantile needs autolabels: use it with a classification "
                            "task")
        # θf's probability of its own argmax label is exp(−loss at θf).
        eligible = confident_rows(torch.exp(-loss_ft).numpy(), labels.numpy(),
                                  cfg.selection.confidence_quantile)
        info["eligible_documents"] = int(eligible.sum())
    selections = {}
    for name in cfg.selection.strategies:
        with clock(f"select:{name}"):
            selections[name] = run_strategy(
                name, cfg.selection.k, grads, labels, loss_ft, loss_base,
                seed=cfg.selection.seed, reset_every=cfg.selection.reset_every, n=len(texts),
                progress=progress, greedy_method=cfg.selection.greedy,
                epsilon=cfg.selection.epsilon, device=pair.device, eligible=eligible,
            )
    info["timings_s"] = clock.stages
    result = SelectResult(cfg, texts, pair.task, _label_names(pair, framing), labels, loss_ft,
                          loss_base, grads, selections, info)
    if cfg.out:
        output.write_run(result, cfg.out, cfg.overwrite)
    return result


def _run_store(cfg, pair, framing, texts, lengths, target, info, world, clock, progress):
    """Build (or resume, or reuse) the store, then open it; None on ranks other than 0."""
    g = cfg.gradients
    alphas = checkpoint_alphas(g.checkpoints, g.grad_at)
    info["alphas"] = alphas
    projector = make_projector(*target.shape, g.projection, g.projection_dim, g.exact_max, g.seed,
                               pair.device)
    gs = store.GradientStore(g.store)
    spec = {
        "task": pair.task, "labels": cfg.model.labels, "prompt_template": cfg.model.prompt_template,
        "max_length": cfg.corpus.max_length, "model_dtype": cfg.model.dtype,
        "head_init": info["head_init"], "batch_size": g.batch_size, "alphas": alphas,
        "projection": projector.describe(),
        "base": store.fingerprint_model(pair.base, framing.last_layer(pair.base)),
        "finetuned": store.fingerprint_model(pair.finetuned, framing.last_layer(pair.finetuned)),
        "corpus": store.fingerprint_texts(texts),
    }
    q = target.float().to(pair.device)
    layout = store.layout_for(len(texts), len(alphas), projector.dim, g.shard_size, g.store_dtype,
                              q.norm().item(), alphas, projector.describe())

    def compute(rows: list[int]) -> store.Shard:
        part, part_lengths = [texts[i] for i in rows], [lengths[i] for i in rows]
        labels, loss_ft = score_documents(framing, pair.finetuned, part, g.batch_size,
                                          lengths=part_lengths, progress=False)
        grads = extract(framing, pair.base, pair.finetuned, part, labels, projector, target,
                        alphas, g.batch_size, part_lengths, progress=False)
        loss_base = grads.base_loss
        if loss_base is None:  # θ0 is not among the checkpoints: one more pass for loss-diff
            _, loss_base = score_documents(framing, pair.base, part, g.batch_size, labels,
                                           part_lengths, progress=False)
        if labels is None:
            labels = torch.full((len(rows),), -1, dtype=torch.long)
        return store.Shard(grads.grads, grads.align, grads.sqnorm, labels, loss_ft, loss_base)

    with clock("store"):
        store.build(gs, spec, layout, projector.project_matrix(q).cpu(), len(texts), compute,
                    world.rank, world.size, world.barrier, progress)
    if not world.main:
        return None
    opened = gs.open()
    info["projection"] = opened.gradients.projector
    info["store"] = {"path": str(gs.path), "dtype": g.store_dtype, "shards": layout["shards"]}
    return opened.labels, opened.loss_ft, opened.loss_base, opened.gradients


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
    if not 0 <= cfg.selection.confidence_quantile < 1:
        raise UserError("--confidence-quantile is a share in [0, 1)")


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
