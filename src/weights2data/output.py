"""The output folder of a selection run, written atomically: files go into a hidden
sibling folder that is renamed into place only once manifest.json is complete."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import UserError

if TYPE_CHECKING:
    from .pipeline import SelectResult

MANIFEST = "manifest.json"
_PACKAGES = ("weights2data", "torch", "transformers", "datasets", "peft", "numpy", "pot")


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def check_destination(out: str | Path, overwrite: bool) -> None:
    """Refuse to clobber a finished run (unless overwrite) or a folder that is not ours."""
    out = Path(out)
    if not out.exists() or overwrite:
        return
    if (out / MANIFEST).exists():
        raise UserError(f"{out} already holds a finished run; pass --overwrite or choose another --out")
    if out.is_file() or any(out.iterdir()):
        raise UserError(f"{out} exists and is not an empty folder; choose another --out")


def atomic_folder(out: Path, write, overwrite: bool) -> None:
    """Call write(tmp) on a fresh hidden sibling folder, then move it to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def png_base64(fig, dpi: int = 90) -> str:
    """A matplotlib figure as base64 PNG for a self-contained report page; closes it."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_plain) + "\n")


def _plain(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def write_run(result: SelectResult, out: str | Path, overwrite: bool = False) -> Path:
    """selected-<strategy>.jsonl, scores.parquet, curves.json, manifest.json."""
    out = Path(out)
    check_destination(out, overwrite)

    def write(tmp: Path) -> None:
        names = result.label_names
        labels = result.labels.tolist() if result.labels is not None else None
        for name, sel in result.selections.items():
            with open(tmp / f"selected-{name}.jsonl", "w") as f:
                for rank, (i, score) in enumerate(zip(sel.indices, sel.scores)):
                    row = {"rank": rank, "index": i, "text": result.texts[i],
                           "autolabel": names[labels[i]] if labels else None, "score": score}
                    f.write(json.dumps(row) + "\n")
        pq.write_table(_scores_table(result), tmp / "scores.parquet")
        curves = {n: s.curve for n, s in result.selections.items() if s.curve}
        write_json(tmp / "curves.json", curves)
        manifest = {
            "complete": True,
            "config": result.config.to_dict(),
            "versions": versions(),
            **result.info,
            "label_names": names,
            "strategies": {
                n: {"k": len(s.indices), "peak": s.peak} for n, s in result.selections.items()
            },
        }
        write_json(tmp / MANIFEST, manifest)

    atomic_folder(out, write, overwrite)
    return out


def _scores_table(result: SelectResult) -> pa.Table:
    n = len(result.texts)
    cols: dict[str, object] = {"index": np.arange(n)}
    if result.labels is not None:
        cols["autolabel"] = result.labels.numpy()
    cols["loss_finetuned"] = result.loss_finetuned.numpy()
    if result.loss_base is not None:
        cols["loss_base"] = result.loss_base.numpy()
        cols["loss_diff"] = (result.loss_finetuned - result.loss_base).numpy()
    if result.gradients is not None:
        g = result.gradients
        cols["cosine"] = g.cosines().numpy()
        cols["alignment"] = g.align.mean(0).numpy()
        cols["grad_norm"] = g.sqnorm.sqrt().mean(0).numpy()
    for name, sel in result.selections.items():
        rank = np.full(n, -1)
        rank[sel.indices] = np.arange(len(sel.indices))
        cols[f"rank_{name}"] = rank
    return pa.table(cols)
