"""torchrun with 2 CPU processes (gloo) builds the same store as one process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import tiny

import weights2data


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(weights2data.__file__).parents[1])
    env["OMP_NUM_THREADS"] = "1"  # same kernels (and bits) in both runs
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_two_processes_build_the_single_process_store(tmp_path):
    base, tok = tiny.llama_lm(tie=True)
    base_dir = tiny.save(base, tok, tmp_path / "base")
    ft_dir = tiny.save(tiny.perturbed(base), tok, tmp_path / "ft")
    corpus = tiny.write_jsonl(tiny.corpus(30), tmp_path / "corpus.jsonl")

    def args(name):
        return ["select", "--base", base_dir, "--finetuned", ft_dir, "--corpus", str(corpus),
                "--k", "4", "--checkpoints", "2", "--batch-size", "4", "--shard-size", "7",
                "--layers", "changed",  # every linear module: the partial backward on each rank
                "--store-dtype", "float16", "--device", "cpu", "--quiet",
                "--store", str(tmp_path / f"store-{name}"), "--out", str(tmp_path / f"out-{name}")]

    one = subprocess.run([sys.executable, "-m", "weights2data", *args("one")], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", _free_port(), "-m", "weights2data", *args("two")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = tmp_path / "store-one", tmp_path / "store-two"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 + 5 * 7  # manifest, target, 5 shards of 6 arrays + shard.json
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    sel = "selected-select.jsonl"
    assert (tmp_path / "out-one" / sel).read_text() == (tmp_path / "out-two" / sel).read_text()
    assert two.stdout.count("wrote ") == 1  # only rank 0 selects and writes
