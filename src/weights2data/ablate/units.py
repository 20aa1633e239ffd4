"""Partitions of a corpus and their split into equal-token base units.

A unit takes whole documents of one partition, in corpus order, until it holds
`unit_tokens` tokens (counted the way training sees them: truncated at max_length).
Units are therefore equal to within one document; merging weights each by its exact
token count. What is left of a partition after its last full unit is dropped and
reported. Corpus order (not a shuffle) keeps old units unchanged when rows are appended,
so adding data trains only the new units.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import UserError
from ..corpus import load_corpus


@dataclass
class Partition:
    """Documents of one partition, with where each came from (file and row)."""

    name: str
    texts: list[str]
    rows: list[int]
    source: str  # the corpus file or SELECT run the rows index into


@dataclass
class Unit:
    """One base unit: whole documents of one partition, about `unit_tokens` tokens."""

    id: str
    partition: str
    source: str
    rows: list[int]
    texts: list[str] = field(repr=False)
    tokens: int

    def fingerprint(self) -> str:
        """sha256 of the unit's documents, so a unit id can never silently change content."""
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()

    def meta(self) -> dict:
        return {"id": self.id, "partition": self.partition, "source": self.source, "rows": self.rows,
                "documents": len(self.rows), "tokens": self.tokens, "fingerprint": self.fingerprint()}


@dataclass
class Dropped:
    """The remainder of a partition that did not fill a unit."""

    partition: str
    documents: int
    tokens: int


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """A partition name usable in a file name and a mixture spec ('+' separates units)."""
    return _SAFE.sub("_", str(name)).strip("._") or "partition"


def split_units(
    partitions: list[Partition], lengths: dict[str, list[int]], unit_tokens: int
) -> tuple[list[Unit], list[Dropped]]:
    """Cut each partition into units of >= unit_tokens tokens; the remainder is dropped."""
    if unit_tokens < 1:
        raise UserError(f"--unit-tokens must be positive, got {unit_tokens}")
    names = [safe_name(p.name) for p in partitions]
    if len(set(names)) != len(names):
        raise UserError(f"partition names collide once made file-safe: {', '.join(sorted(names))}")
    units: list[Unit] = []
    dropped: list[Dropped] = []
    for part in partitions:
        if not part.texts:
            raise UserError(f"partition {part.name!r} is empty")
        start, total, j = 0, 0, 0
        for i, n in enumerate(lengths[part.name]):
            total += n
            if total >= unit_tokens:
                units.append(Unit(f"{safe_name(part.name)}-{j:03d}", part.name, part.source,
                                  part.rows[start : i + 1], part.texts[start : i + 1], total))
                start, total, j = i + 1, 0, j + 1
        if start < len(part.texts):
            dropped.append(Dropped(part.name, len(part.texts) - start, total))
    return units, dropped


def by_column(path: str, column: str, text_column: str = "text", limit: int | None = None) -> list[Partition]:
    """One partition per value of `column`, in order of first appearance."""
    ds = load_corpus(path, text_column, limit)
    if column not in ds.column_names:
        raise UserError(f"corpus {path} has no column {column!r} to partition by "
                        f"(columns: {', '.join(ds.column_names)})")
    texts, keys = list(ds[text_column]), list(ds[column])
    parts: dict[str, Partition] = {}
    for row, (text, key) in enumerate(zip(texts, keys)):
        if key is None or str(key).strip() == "":
            raise UserError(f"corpus {path} row {row}: {column!r} is empty; every row needs a partition")
        p = parts.setdefault(str(key), Partition(str(key), [], [], str(path)))
        p.texts.append(text)
        p.rows.append(row)
    return list(parts.values())


def from_files(paths: list[str], text_column: str = "text") -> list[Partition]:
    """One partition per data file (named by its stem), or per selection of a SELECT run folder
    (selected-<strategy>.jsonl, rows = the run's corpus indices)."""
    parts: list[Partition] = []
    for path in map(Path, paths):
        if path.is_dir() and (path / "manifest.json").is_file():
            files = sorted(path.glob("selected-*.jsonl"))
            if not files:
                raise UserError(f"SELECT run {path} holds no selected-*.jsonl")
            for f in files:
                rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
                name = f.stem.removeprefix("selected-")
                if not rows:
                    raise UserError(f"partition {name!r} ({f}) is empty")
                parts.append(Partition(name, [r["text"] for r in rows], [int(r["index"]) for r in rows],
                                       str(path)))
        else:
            if path.is_file() and path.stat().st_size == 0:
                raise UserError(f"partition {path.stem!r} ({path}) is empty")
            ds = load_corpus(path, text_column)
            parts.append(Partition(path.stem, list(ds[text_column]), list(range(len(ds))), str(path)))
    return parts
