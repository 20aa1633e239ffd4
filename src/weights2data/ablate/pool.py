"""A pool of unit models: BASE continued on each base unit with one fixed recipe, each stored
as a safetensors delta from BASE.

    pool/
      pool.json                   base (path, fingerprint), recipe, max_length, unit_tokens
      units/<id>/delta.safetensors  θ_u − θ0 for every trained parameter
      units/<id>/unit.json          rows, tokens, documents' fingerprint, base fingerprint, recipe
      units/<id>/texts.jsonl        the unit's documents, so validation needs no corpus

A unit is trained in a hidden sibling folder and renamed into place only when complete:
a finished unit is skipped on the next run, one cut off midway is redone from scratch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..checkpoints import load_model
from ..config import UserError
from ..evaluation.train import Recipe, train
from ..framings import LanguageModel
from ..output import versions, write_json
from .units import Dropped, Partition, Unit, split_units

POOL = "pool.json"
FORMAT = 1


@dataclass
class PoolSpec:
    """What every unit model of a pool shares: the base and the training recipe."""

    base: str
    gguf_file: str | None = None
    dtype: str = "float32"
    max_length: int = 128
    unit_tokens: int = 20_000
    recipe: Recipe = field(default_factory=Recipe)
    freeze_embeddings: bool = False  # train everything but the (tied) embedding matrices

    def training(self) -> dict:
        """The settings a request must repeat to add units to an existing pool."""
        return {"recipe": self.recipe.to_dict(), "max_length": self.max_length,
                "unit_tokens": self.unit_tokens, "freeze_embeddings": self.freeze_embeddings,
                "dtype": self.dtype}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PoolSpec:
        return cls(**{**d, "recipe": Recipe(**d["recipe"])})


@dataclass
class Pool:
    """An opened pool: its spec, base fingerprint, and finished units by id."""

    path: Path
    spec: PoolSpec
    base_fingerprint: str
    units: dict[str, dict]  # id -> unit.json

    def delta_path(self, uid: str) -> Path:
        return self.path / "units" / uid / "delta.safetensors"

    def texts(self, uid: str) -> list[str]:
        lines = (self.path / "units" / uid / "texts.jsonl").read_text().splitlines()
        return [json.loads(line)["text"] for line in lines if line.strip()]

    def tokens(self, uid: str) -> int:
        return int(self.units[uid]["tokens"])

    def load_base(self, device: str = "cpu"):
        """θ0 and its tokenizer, refusing a base that is not the one the units were trained from."""
        model, tok = load_model(self.spec.base, self.spec.gguf_file, self.spec.dtype, device)
        if fingerprint(model) != self.base_fingerprint:
            raise UserError(f"the base {self.spec.base} has changed since pool {self.path} was trained")
        return model, tok

    def framing(self, tokenizer) -> LanguageModel:
        return LanguageModel(tokenizer, self.spec.max_length)


def fingerprint(model: PreTrainedModel) -> str:
    """sha256 over every parameter (names and values), tied ones once."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def trainable(model: PreTrainedModel, freeze_embeddings: bool) -> None:
    """Mark which parameters the recipe updates (and so which get a delta)."""
    frozen = set()
    if freeze_embeddings:
        frozen = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings())
                  if m is not None}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)


def open_pool(path: str | Path) -> Pool:
    """Read pool.json and the finished units; refuse units trained from another base."""
    path = Path(path)
    if not (path / POOL).is_file():
        raise UserError(f"{path} is not a unit pool (no {POOL}); create one with `weights2data ablate train`")
    meta = json.loads((path / POOL).read_text())
    spec = PoolSpec.from_dict(meta["spec"])
    units = {}
    for f in sorted((path / "units").glob("*/unit.json")):
        u = json.loads(f.read_text())
        if u["base_fingerprint"] != meta["base_fingerprint"]:
            raise UserError(f"unit {u['id']} in {path} was trained from another base model than the pool's")
        if u["training"] != spec.training():
            raise UserError(f"unit {u['id']} in {path} was trained with another recipe than the pool's")
        units[u["id"]] = u
    return Pool(path, spec, meta["base_fingerprint"], units)


def _check_destination(out: Path, spec: PoolSpec, base_fp: str) -> bool:
    """True when `out` already holds a compatible pool; raise on anything else."""
    if not out.exists():
        return False
    if (out / POOL).is_file():
        pool = open_pool(out)
        if pool.base_fingerprint != base_fp:
            raise UserError(f"pool {out} was trained from another base model; choose another --out")
        if pool.spec.training() != spec.training():
            old, new = _flat(pool.spec.training()), _flat(spec.training())
            key = next(k for k in new if old.get(k) != new[k])
            raise UserError(f"pool {out} was trained with {key}={old.get(key)}, the request has "
                            f"{key}={new[key]}; use the same recipe or another --out")
        return True
    if out.is_file() or any(out.iterdir()):
        raise UserError(f"{out} exists and is not a unit pool; choose another --out")
    return False


def _flat(training: dict) -> dict:
    recipe = training["recipe"]
    return {**{k: v for k, v in training.items() if k != "recipe"}, **recipe}


def _write_atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    write_json(tmp, obj)
    os.replace(tmp, path)


@dataclass
class TrainSummary:
    pool: Path
    trained: list[str]
    skipped: list[str]
    dropped: list[Dropped]
    units: list[Unit]
    steps: int  # optimizer steps run now
    seconds: float


def train_pool(
    out: str | Path,
    spec: PoolSpec,
    partitions: list[Partition],
    device: str = "cpu",
    progress: bool = True,
) -> TrainSummary:
    """Split partitions into units and train one model per unit not yet in the pool at `out`."""
    out = Path(out)
    t0 = time.perf_counter()
    if Path(spec.base).exists():  # so score/validate find it from any working directory
        spec = replace(spec, base=str(Path(spec.base).resolve()))
    if not partitions:
        raise UserError("no partitions to train on")
    for p in partitions:
        if not p.texts:
            raise UserError(f"partition {p.name!r} is empty")
    model, tok = load_model(spec.base, spec.gguf_file, spec.dtype, device)
    base_fp = fingerprint(model)
    framing = LanguageModel(tok, spec.max_length)
    lengths = {p.name: framing.token_counts(p.texts) for p in partitions}
    units, dropped = split_units(partitions, lengths, spec.unit_tokens)
    if not units:
        biggest = max(sum(v) for v in lengths.values())
        raise UserError(f"no partition fills one unit of {spec.unit_tokens} tokens (the largest has "
                        f"{biggest}); lower --unit-tokens")
    existing = _check_destination(out, spec, base_fp)
    done = open_pool(out).units if existing else {}
    for u in units:
        if u.id in done and done[u.id]["fingerprint"] != u.fingerprint():
            raise UserError(f"unit {u.id} in pool {out} holds other documents than the request's "
                            "(rows changed, not appended); use another --out")
    # Everything is validated: from here on the pool is written.
    (out / "units").mkdir(parents=True, exist_ok=True)
    if not existing:
        _write_atomic_json(out / POOL, {
            "format": FORMAT, "spec": spec.to_dict(), "base_fingerprint": base_fp,
            "base": {"model_type": model.config.model_type, "layers": model.config.num_hidden_layers,
                     "parameters": sum(p.numel() for p in model.parameters())},
            "versions": versions(),
        })
    for stale in (out / "units").glob(".*.partial-*"):  # units cut off midway: redo
        shutil.rmtree(stale, ignore_errors=True)
    todo = [u for u in units if u.id not in done]
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bar = tqdm(todo, desc="unit models", unit="unit", disable=not progress or not todo)
    for u in bar:
        bar.set_postfix(unit=u.id, refresh=False)
        _train_unit(model, base_state, u, framing, spec, spec.recipe, base_fp, out / "units", progress)
    return TrainSummary(out, [u.id for u in todo], [u.id for u in units if u.id in done], dropped,
                        units, len(todo) * spec.recipe.steps, time.perf_counter() - t0)


def train_union(pool: Pool, mixture: tuple[str, ...], model, base_state, framing,
                progress: bool = True) -> Path:
    """BASE trained on the union of a mixture's units with the pool's recipe, for as many steps
    as its unit models took together (so the same number of tokens). Stored like a unit under
    pool/mixtures/<name>/ and reused on the next call."""
    name = "+".join(mixture)
    folder = pool.path / "mixtures"
    if (folder / name / "unit.json").is_file():
        return folder / name
    folder.mkdir(exist_ok=True)
    for stale in folder.glob(f".{name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    texts = [t for u in mixture for t in pool.texts(u)]
    union = Unit(name, "+".join(pool.units[u]["partition"] for u in mixture), "pool", [], texts,
                 sum(pool.tokens(u) for u in mixture))
    recipe = replace(pool.spec.recipe, steps=pool.spec.recipe.steps * len(mixture))
    _train_unit(model, base_state, union, framing, pool.spec, recipe, pool.base_fingerprint, folder,
                progress)
    return folder / name


def _train_unit(model, base_state, unit: Unit, framing, spec: PoolSpec, recipe: Recipe,
                base_fp: str, folder: Path, progress: bool) -> None:
    t0 = time.perf_counter()
    tmp = folder / f".{unit.id}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model.load_state_dict(base_state)
        trainable(model, spec.freeze_embeddings)
        log = train(model, framing, unit.texts, None, recipe, progress=progress)
        with torch.no_grad():
            delta = {n: (p.detach() - base_state[n]).contiguous()
                     for n, p in model.named_parameters() if p.requires_grad}
        save_file(delta, str(tmp / "delta.safetensors"), metadata={"base_fingerprint": base_fp})
        (tmp / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in unit.texts))
        write_json(tmp / "unit.json", {**unit.meta(), "base_fingerprint": base_fp,
                                       "training": spec.training(), "steps": recipe.steps,
                                       "final_train_loss": log.final_loss,
                                       "seconds": round(time.perf_counter() - t0, 2)})
        tmp.rename(folder / unit.id)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        model.load_state_dict(base_state)
