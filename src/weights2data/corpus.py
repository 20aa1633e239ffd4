"""Reading a seed corpus through `datasets`: jsonl / json / csv / parquet files or folders,
or a dataset saved with `save_to_disk`."""

from __future__ import annotations

import codecs
from pathlib import Path

import datasets

from .config import UserError

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _data_files(path: Path) -> tuple[str, list[str]]:
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.suffix in _BUILDERS and p.is_file())
    if not files:
        raise UserError(f"corpus {path}: no .jsonl, .json, .csv or .parquet files found")
    kinds = {_BUILDERS.get(p.suffix) for p in files}
    if None in kinds:
        raise UserError(f"corpus {path}: unsupported file type (use .jsonl, .json, .csv or .parquet)")
    if len(kinds) > 1:
        raise UserError(f"corpus {path}: mixes file types {sorted(kinds)}; use one type")
    return kinds.pop(), [str(p) for p in files]


def load_corpus(path: str | Path, text_column: str = "text", limit: int | None = None) -> datasets.Dataset:
    """Load a corpus and check its text column: present, non-empty, strings only.

    Row order is preserved, so row numbers are stable document indices.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"corpus {path} does not exist")
    bars = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # reading a local file needs no bar of its own
    try:
        if path.is_dir() and (path / "state.json").exists():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                raise UserError(f"corpus {path} is a DatasetDict; point at one split's folder")
        else:
            builder, files = _data_files(path)
            if builder != "parquet":
                for f in files:
                    check_utf8(Path(f))
            ds = datasets.load_dataset(builder, data_files=files, split="train")
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; all mean "malformed"
        raise UserError(f"corpus {path} could not be read: {_first_line(err)}") from err
    finally:
        if bars:
            datasets.enable_progress_bars()
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return validate(ds, text_column, str(path))


def check_utf8(path: Path, chunk: int = 1 << 20) -> None:
    """A UserError naming the first line of a text file that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as f:
        while block := f.read(chunk):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as err:
                line += err.object[: err.start].count(b"\n")  # err.object: pending bytes + block
                raise UserError(f"corpus file {path} is not UTF-8 text: line {line} has the byte "
                                f"0x{err.object[err.start]:02x}; convert the file to UTF-8") from None
            line += block.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise UserError(f"corpus file {path} is not UTF-8 text: it ends inside a character "
                            f"(line {line}); convert the file to UTF-8") from None


def validate(ds: datasets.Dataset, text_column: str, name: str = "corpus") -> datasets.Dataset:
    """Raise a UserError naming the first problem of a corpus' text column."""
    if text_column not in ds.column_names:
        raise UserError(
            f"{name} has no column {text_column!r} (columns: {', '.join(ds.column_names)}); "
            "pass --text-column"
        )
    if len(ds) == 0:
        raise UserError(f"{name} is empty")
    for i, text in enumerate(list(ds[text_column])):
        if not isinstance(text, str):
            raise UserError(f"{name} row {i}: {text_column!r} is {type(text).__name__}, not text")
        if not text.strip():
            raise UserError(f"{name} row {i}: {text_column!r} is empty; remove empty documents")
    return ds


def _first_line(err: BaseException) -> str:
    """The innermost cause's first line: datasets wraps parser errors in generic ones."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
