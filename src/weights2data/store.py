"""An on-disk, resumable store of everything the passes over the corpus produce.

Layout of a store folder:

    manifest.json          what was computed and how (the spec), shapes, dtype, and once
                           complete the sha256 of every shard file
    target.npy             the target q mapped like the gradients, float32 (d,)
    shard-00000/           rows [0, shard_size): grads.npy (P, n, d) in the store dtype
                           (bfloat16 kept as uint16 bits), align.npy / sqnorm.npy (P, n),
                           labels.npy (n,) int64 (-1 for lm), loss_ft.npy / loss_base.npy (n,),
                           shard.json (sha256 of each file; written last)
    shard-00001/ ...

A shard is computed in `shard-XXXXX.partial/` and renamed when complete, so a run cut off
mid-shard leaves a `.partial` folder that the next run deletes and redoes; finished shards
are skipped. Every shard is a pure function of the spec (documents batched in a fixed order
within the shard), so a resumed or multi-process store is byte-identical to one built in a
single uninterrupted run. A store whose spec differs from the current run is refused.
Only .npy and .json: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import UserError
from .gradients import Gradients
from .selection.rows import ArrayRows

FORMAT = "weights2data-gradient-store"
VERSION = 1
STORE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
_FILES = ("grads", "align", "sqnorm", "labels", "loss_ft", "loss_base")


@dataclass
class Shard:
    """What one shard holds, in memory, before it is written."""

    grads: torch.Tensor  # (P, n, d) float32
    align: torch.Tensor  # (P, n)
    sqnorm: torch.Tensor  # (P, n)
    labels: torch.Tensor  # (n,) int64, -1 where there is no label
    loss_ft: torch.Tensor  # (n,)
    loss_base: torch.Tensor  # (n,)


@dataclass
class Stored:
    """A complete store, opened for selection (gradients stay memory-mapped)."""

    gradients: Gradients
    labels: torch.Tensor | None
    loss_ft: torch.Tensor
    loss_base: torch.Tensor
    manifest: dict


# -- fingerprints -------------------------------------------------------------------------

def _sha(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def fingerprint_model(model: torch.nn.Module, last_layer: torch.Tensor) -> str:
    """sha256 of the config, every parameter's name/shape/dtype and a strided sample of its
    values, and the whole last layer: cheap, and any real change of checkpoint shows up."""
    h = hashlib.sha256()
    cfg = {k: v for k, v in model.config.to_dict().items()
           if k not in ("transformers_version", "_name_or_path", "_commit_hash")}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)].float().cpu().contiguous()
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(sample.numpy().tobytes())
    h.update(last_layer.float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint_texts(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# -- the store -----------------------------------------------------------------------------

class GradientStore:
    """A store folder; `prepare` checks or creates its manifest, `build` fills missing shards."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            m = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{self.manifest_path} is not valid JSON ({err}); delete the store") from err
        if m.get("format") != FORMAT:
            raise UserError(f"{self.path} is not a weights2data gradient store")
        return m

    def check(self, spec: dict) -> dict | None:
        """The existing manifest when it was built with `spec`; UserError when not."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--store {self.path} exists and is not a folder")
        m = self.manifest()
        if m is None:
            if self.path.is_dir() and any(self.path.iterdir()):
                raise UserError(f"--store {self.path} is a non-empty folder without a manifest; "
                                "give an empty or new folder")
            return None
        if m.get("version") != VERSION:
            raise UserError(f"store {self.path} has format version {m.get('version')}, "
                            f"this weights2data writes version {VERSION}; use a new folder")
        old = m["spec"]
        for key in sorted(set(old) | set(spec)):
            if old.get(key) != spec.get(key):
                raise UserError(
                    f"store {self.path} was built with another configuration ({key}: "
                    f"{_short(old.get(key))} there, {_short(spec.get(key))} now); "
                    "use another --store folder or delete this one"
                )
        return m

    def create(self, spec: dict, layout: dict, target: torch.Tensor) -> None:
        """Write the manifest and target of a new store (rank 0 only)."""
        self.path.mkdir(parents=True, exist_ok=True)
        np.save(self.path / "target.npy", target.float().cpu().numpy())
        m = {"format": FORMAT, "version": VERSION, "spec": spec, **layout, "complete": False}
        _write_json(self.manifest_path, m)

    def shard_name(self, k: int) -> str:
        return f"shard-{k:05d}"

    def done(self, k: int) -> bool:
        return (self.path / self.shard_name(k) / "shard.json").is_file()

    def write_shard(self, k: int, shard: Shard, dtype: str) -> None:
        """Write shard k through a `.partial` folder, renamed only once complete."""
        final = self.path / self.shard_name(k)
        tmp = final.with_name(final.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        grads = shard.grads.float()
        if dtype == "float16" and grads.abs().max() > 65504:
            raise UserError("gradients exceed the float16 range; use --store-dtype bfloat16 or float32")
        stored = grads.to(torch.bfloat16).view(torch.uint16) if dtype == "bfloat16" else grads
        arrays = {
            "grads": stored.numpy().astype(STORE_DTYPES[dtype], copy=False),
            "align": shard.align.float().numpy(),
            "sqnorm": shard.sqnorm.float().numpy(),
            "labels": shard.labels.long().numpy(),
            "loss_ft": shard.loss_ft.float().numpy(),
            "loss_base": shard.loss_base.float().numpy(),
        }
        sums = {}
        for name, arr in arrays.items():
            mm = np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", arr.dtype, tuple(arr.shape))
            mm[...] = arr
            mm.flush()
            del mm
            sums[f"{name}.npy"] = file_sha(tmp / f"{name}.npy")
        _write_json(tmp / "shard.json", {"rows": int(len(shard.labels)), "sha256": sums})
        if final.exists():  # a finished copy from a concurrent run: keep one
            shutil.rmtree(tmp)
            return
        os.replace(tmp, final)

    def finish(self, shards: int) -> None:
        """Record every shard's checksums in the manifest and mark the store complete."""
        m = self.manifest()
        m["checksums"] = {}
        for k in range(shards):
            meta = json.loads((self.path / self.shard_name(k) / "shard.json").read_text())
            m["checksums"][self.shard_name(k)] = meta["sha256"]
        m["complete"] = True
        _write_json(self.manifest_path, m)

    def open(self, verify: bool = True) -> Stored:
        """Memory-map a complete store; with `verify`, check every file's sha256 first."""
        m = self.manifest()
        if m is None or not m.get("complete"):
            raise UserError(f"store {self.path} is incomplete; rerun the same command to finish it")
        arrays: dict[str, list[np.ndarray]] = {f: [] for f in _FILES}
        for k in range(m["shards"]):
            folder = self.path / self.shard_name(k)
            for name in _FILES:
                f = folder / f"{name}.npy"
                if not f.is_file():
                    raise UserError(f"store {self.path}: {f.name} of {folder.name} is missing")
                if verify and file_sha(f) != m["checksums"][folder.name][f.name]:
                    raise UserError(f"store {self.path}: {folder.name}/{f.name} does not match its "
                                    "checksum (changed or damaged); delete the store and rebuild")
                arrays[name].append(np.load(f, mmap_mode="r", allow_pickle=False))
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

        def cat(name, axis):
            return torch.from_numpy(np.concatenate(arrays[name], axis=axis))

        labels = cat("labels", 0)
        grads = Gradients(
            grads=ArrayRows(arrays["grads"], dtype[m["dtype"]]),
            align=cat("align", 1), sqnorm=cat("sqnorm", 1),
            target=torch.from_numpy(np.load(self.path / "target.npy", allow_pickle=False)),
            target_norm=m["target_norm"], alphas=m["alphas"],
            base_loss=cat("loss_base", 0), projector=m["projector"],
        )
        return Stored(grads, None if m["spec"]["task"] == "lm" else labels, cat("loss_ft", 0),
                      cat("loss_base", 0), m)


def build(
    store: GradientStore,
    spec: dict,
    layout: dict,
    target: torch.Tensor,
    n: int,
    compute: Callable[[list[int]], Shard],
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
    progress: bool = True,
) -> None:
    """Fill every missing shard of `store`: rank r computes shards r, r + world, ...;
    `compute(rows)` returns the Shard of those corpus rows."""
    existing = store.check(spec)
    if existing is not None:
        for key in ("documents", "shards", "shard_size", "dim", "dtype"):
            if existing.get(key) != layout.get(key):
                raise UserError(f"store {store.path} has {key} = {existing.get(key)}, this run "
                                f"{layout.get(key)}; use another --store folder")
        if existing.get("complete"):
            return
    barrier()  # every rank has checked before rank 0 writes anything
    if existing is None and rank == 0:
        store.create(spec, layout, target)
    barrier()
    size, shards = layout["shard_size"], layout["shards"]
    mine = [k for k in range(rank, shards, world) if not store.done(k)]
    bar = tqdm(total=len(mine), desc=f"store shards (rank {rank})" if world > 1 else "store shards",
               disable=not progress, unit="shard")
    for k in mine:
        rows = list(range(k * size, min(n, (k + 1) * size)))
        store.write_shard(k, compute(rows), layout["dtype"])
        bar.update(1)
    bar.close()
    barrier()
    if rank == 0:
        store.finish(shards)
    barrier()


def layout_for(n: int, p: int, d: int, shard_size: int, dtype: str, target_norm: float,
               alphas: list[float], projector: dict) -> dict:
    if dtype not in STORE_DTYPES:
        raise UserError(f"--store-dtype {dtype}: choose from {', '.join(STORE_DTYPES)}")
    if shard_size < 1:
        raise UserError("--shard-size must be at least 1")
    return {"documents": n, "checkpoints": p, "dim": d, "dtype": dtype, "shard_size": shard_size,
            "shards": -(-n // shard_size), "target_norm": target_norm, "alphas": alphas,
            "projector": projector}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _short(x) -> str:
    s = json.dumps(x, sort_keys=True, default=str)
    return s if len(s) <= 60 else s[:57] + "..."
