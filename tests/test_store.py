"""The gradient store: same results as in memory, resumable byte for byte, never reused
under another configuration."""

import json
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch

from weights2data import UserError, select
from weights2data.cli import main
from weights2data.store import GradientStore


@pytest.fixture(scope="module")
def lm_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    base, tok = tiny.gpt2_lm()
    base_dir = tiny.save(base, tok, root / "base")
    ft_dir = tiny.save(tiny.perturbed(base), tok, root / "ft")
    corpus = tiny.write_jsonl(tiny.corpus(40), root / "corpus.jsonl")
    tiny.save(tiny.perturbed(base, seed=9), tok, root / "ft2")
    return base_dir, ft_dir, str(corpus)


def _run(pair, **kw):
    base, ft, corpus = pair
    opts = dict(base=base, finetuned=ft, corpus=corpus, k=6, checkpoints=2, batch_size=4,
                strategies=["select", "loss-diff", "topk"], device="cpu")
    opts.update(kw)
    return select(progress=False, **opts)


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_store_gives_the_in_memory_results(lm_pair, tmp_path):
    mem = _run(lm_pair)
    # one shard: documents are batched exactly as in memory, so results match bit for bit
    st = _run(lm_pair, store=str(tmp_path / "s"), shard_size=1000)
    for name in mem.selections:
        assert st.selections[name].indices == mem.selections[name].indices
    assert torch.equal(st.loss_finetuned, mem.loss_finetuned)
    assert torch.equal(st.loss_base, mem.loss_base)
    assert torch.equal(st.gradients.align, mem.gradients.align)
    # the rerun reuses the store: no pass over the corpus at all
    again = _run(lm_pair, store=str(tmp_path / "s"), shard_size=1000, strategies=["select"])
    assert again.selections["select"].indices == mem.selections["select"].indices


def test_store_with_inner_layers_gives_the_in_memory_results(lm_pair, tmp_path):
    layers = ["transformer.h.1.mlp.c_fc", "lm_head"]
    mem = _run(lm_pair, layers=layers, strategies=["select"])
    st = _run(lm_pair, layers=layers, strategies=["select"], store=str(tmp_path / "s"),
              shard_size=1000)
    assert st.selections["select"].indices == mem.selections["select"].indices
    assert torch.equal(st.gradients.align, mem.gradients.align)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["spec"]["layers"] == layers
    with pytest.raises(UserError, match="another configuration"):  # other layers, other store
        _run(lm_pair, layers=["lm_head"], strategies=["select"], store=str(tmp_path / "s"),
             shard_size=1000)


def test_resume_after_an_interruption_is_byte_identical(lm_pair, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    _run(lm_pair, store=str(whole), shard_size=8, store_dtype="float16")
    cut = tmp_path / "cut"
    real = GradientStore.write_shard
    calls = []

    def crash_in_shard_2(self, k, shard, dtype):
        calls.append(k)
        if k == 2:  # die half-way through writing shard 2
            (self.path / "shard-00002.partial").mkdir()
            (self.path / "shard-00002.partial" / "grads.npy").write_bytes(b"\x93NUMPY trunc")
            raise KeyboardInterrupt
        real(self, k, shard, dtype)

    monkeypatch.setattr(GradientStore, "write_shard", crash_in_shard_2)
    with pytest.raises(KeyboardInterrupt):
        _run(lm_pair, store=str(cut), shard_size=8, store_dtype="float16")
    assert not json.loads((cut / "manifest.json").read_text())["complete"]
    calls.clear()
    monkeypatch.setattr(GradientStore, "write_shard", real)
    seen = []
    monkeypatch.setattr(GradientStore, "write_shard",
                        lambda self, k, *a: (seen.append(k), real(self, k, *a)))
    resumed = _run(lm_pair, store=str(cut), shard_size=8, store_dtype="float16")
    assert seen == [2, 3, 4]  # finished shards skipped, the cut one redone
    assert _files(cut) == _files(whole)
    assert not any(p.name.endswith(".partial") for p in cut.iterdir())
    assert resumed.gradients.grads.dtype == torch.float16


def test_store_built_differently_is_refused(lm_pair, tmp_path):
    path = str(tmp_path / "s")
    _run(lm_pair, store=path, shard_size=16)
    for change in ({"projection_dim": 64, "exact_max": 10}, {"checkpoints": 3},
                   {"max_length": 7}, {"store_dtype": "bfloat16"}, {"shard_size": 8}):
        with pytest.raises(UserError, match="another configuration|use another --store"):
            _run(lm_pair, store=path, **{"shard_size": 16, **change})
    base, ft, corpus = lm_pair
    with pytest.raises(UserError, match="corpus"):  # another corpus, same size
        _run((base, ft, corpus), store=path, shard_size=16, limit=39)
    with pytest.raises(UserError, match="finetuned"):  # another fine-tune
        _run((base, str(Path(ft).parent / "ft2"), corpus), store=path, shard_size=16)


def test_damaged_store_is_detected(lm_pair, tmp_path):
    path = tmp_path / "s"
    _run(lm_pair, store=str(path), shard_size=16)
    f = path / "shard-00001" / "align.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum"):
        _run(lm_pair, store=str(path), shard_size=16)


def test_bfloat16_store_and_cli(lm_pair, tmp_path, capsys):
    base, ft, corpus = lm_pair
    args = ["select", "--base", base, "--finetuned", ft, "--corpus", corpus, "--k", "5",
            "--checkpoints", "1", "--batch-size", "4", "--store", str(tmp_path / "s"),
            "--store-dtype", "bfloat16", "--shard-size", "16", "--greedy", "stochastic",
            "--device", "cpu", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "o1")]) == 0
    arr = np.load(tmp_path / "s" / "shard-00000" / "grads.npy")
    assert arr.dtype == np.uint16  # bfloat16 bits
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["dtype"] == "bfloat16" and manifest["complete"]
    assert main(args + ["--out", str(tmp_path / "o2")]) == 0
    one = (tmp_path / "o1" / "selected-select.jsonl").read_text()
    assert one == (tmp_path / "o2" / "selected-select.jsonl").read_text()
    assert main(args + ["--out", str(tmp_path / "o3"), "--epsilon", "2"]) == 2
    assert "epsilon" in capsys.readouterr().err
