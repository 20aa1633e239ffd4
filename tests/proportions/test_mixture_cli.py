"""`weights2data mixture` end to end on a tiny Llama fine-tuned on a known mixture, the Python
API, and its one-line errors."""

import json

import pytest
import tiny
import torch

import weights2data as w2d
from weights2data.cli import main
from weights2data.config import ModelConfig
from weights2data.framings import make_framing

TRUTH = {"sport": 0.75, "money": 0.25, "music": 0.0}


def sgd(model, framing, texts, steps=30, lr=0.05, batch=8):
    """Plain SGD epochs over `texts`: the regime where θ0 − θf = lr·Σ∇ℓ to first order."""
    return tiny.train(model, framing, texts, torch.optim.SGD(model.parameters(), lr=lr), steps,
                      batch)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A tiny Llama fine-tuned on 30 sport and 10 money documents (75 % / 25 %, no music); the
    corpus holds those documents and 10 music ones."""
    d = tmp_path_factory.mktemp("mixture")
    model, tok = tiny.llama_lm()
    base = tiny.save(model, tok, d / "base")
    pool = tiny.corpus(160, seed=3)
    rows = [r for t, n in (("sport", 30), ("money", 10), ("music", 10))
            for r in [r for r in pool if r["topic"] == t][:n]]
    sgd(model, make_framing("lm", tok, 32, ModelConfig(base, base)), [r["text"] for r in rows[:40]])
    ft = tiny.save(model, tok, d / "ft")
    corpus = tiny.write_jsonl(rows, d / "corpus.jsonl")
    per_domain = {t: str(tiny.write_jsonl([r for r in rows if r["topic"] == t], d / f"{t}.jsonl"))
                  for t in TRUTH}
    return d, base, ft, str(corpus), per_domain


def _mixture(base, ft, out, *extra):
    return main(["mixture", "--base", base, "--finetuned", ft, "--out", str(out), "--quiet",
                 "--max-length", "32", "--bootstrap", "30", *extra])


def test_mixture_end_to_end(lm_run, capsys):
    d, base, ft, corpus, _ = lm_run
    out = d / "run"
    assert _mixture(base, ft, out, "--corpus", corpus, "--domain-column", "topic",
                    "--method", "adam", "--adam-batch", "fit") == 0
    result = json.loads((out / "mixture.json").read_text())
    assert result["domains"] == sorted(TRUTH) and result["unit"] == "documents"
    assert result["documents"] == {"money": 10, "music": 10, "sport": 30}
    methods = result["methods"]
    assert set(methods) == {"adam", "gradient", "select", "topk", "loss"}
    for m in methods.values():
        assert sum(m["proportions"].values()) == pytest.approx(1.0)
        assert sum(m["proportions_tokens"].values()) == pytest.approx(1.0)
    g = methods["gradient"]
    assert 0 < g["explained"] <= 1 and set(g["low"]) == set(g["proportions"])
    assert methods["select"]["k"] == 12  # a quarter of the corpus
    # first-order regime: the fit recovers 75 / 25 / 0
    p = g["proportions"]
    assert p["sport"] == pytest.approx(0.75, abs=0.1) and p["music"] < 0.05, p
    assert p["sport"] + p["money"] + p["music"] == pytest.approx(1.0)  # no "other" by default
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "gradient NNLS" in html
    assert json.loads((out / "manifest.json").read_text())["complete"]
    a = methods["adam"]
    assert a["batch_fitted"] and a["batch"] >= 1 and 0 < a["cosine"] <= 1
    printed = capsys.readouterr().out
    assert "explains" in printed and "headline method: adam" in printed


def test_api_with_one_corpus_per_domain_matches_the_column(lm_run):
    d, base, ft, corpus, per_domain = lm_run
    by_column = w2d.mixture(base=base, finetuned=ft, corpus=corpus, domain_column="topic",
                            max_length=32, bootstrap=0, progress=False)
    by_file = w2d.mixture(base=base, finetuned=ft, domains=per_domain, max_length=32,
                          bootstrap=0, progress=False)
    assert list(by_file.proportions()) == list(TRUTH)  # the order of `domains`
    assert by_file.proportions() == pytest.approx(by_column.proportions(), abs=1e-5)
    assert by_file.proportions("loss") == pytest.approx(by_column.proportions("loss"), abs=1e-6)
    assert by_file.mean_tokens == pytest.approx(by_column.mean_tokens)
    tokens = by_file.in_units("gradient", "tokens")  # shares of tokens: longer domains weigh more
    ratio = {t: tokens[t] / by_file.proportions("gradient")[t] for t in TRUTH if tokens[t] > 0}
    longest = max(ratio, key=ratio.get)
    assert longest == max(ratio, key=by_file.mean_tokens.get)


@pytest.mark.parametrize("args, message", [
    (["--domain-column", "source"], "has no column 'source'"),
    (["--domains", "a=CORPUS"], "at least 2 domains"),
    (["--domains", "a=CORPUS", "b=EMPTY"], "domain 'b'"),
    (["--domains", "a=CORPUS", "b=CORPUS", "a=CORPUS"], "'a' is given twice"),
    (["--domains", "a:CORPUS", "b=CORPUS"], "is not NAME=PATH"),
    (["--domains", "a=CORPUS", "b=MISSING"], "does not exist"),
    (["--domain-column", "topic", "--domains", "a=CORPUS", "b=CORPUS"], "not both"),
    (["--domain-column", "blank"], "row 1 has no 'blank'"),
    (["--domain-column", "only"], "at least 2 domains"),
    (["--domain-column", "topic", "--adam-batch", "big"], "--adam-batch is a number or 'fit'"),
    (["--domain-column", "topic", "--adam-batch", "0.5"], "--adam-batch is the fine-tune's"),
])
def test_bad_domains_are_one_line_errors_and_write_nothing(lm_run, tmp_path, capsys, args, message):
    d, base, ft, corpus, _ = lm_run
    (tmp_path / "empty.jsonl").write_text("")
    rows = [json.loads(line) for line in open(corpus)]
    odd = tiny.write_jsonl([{**r, "blank": "" if i == 1 else "x", "only": "x"}
                            for i, r in enumerate(rows)], tmp_path / "odd.jsonl")
    args = [a.replace("CORPUS", corpus).replace("EMPTY", str(tmp_path / "empty.jsonl"))
            .replace("MISSING", str(tmp_path / "nope.jsonl")) for a in args]
    if "--domain-column" in args and "--domains" not in args:
        args = ["--corpus", str(odd), *args]
    if "--domains" in args and "--domain-column" in args:
        args = ["--corpus", corpus, *args]
    out = tmp_path / "out"
    assert _mixture(base, ft, out, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_classifier_mixture_and_its_unit(tmp_path, capsys):
    model, tok = tiny.bert_classifier()
    base = tiny.save(model, tok, tmp_path / "base")
    ft = tiny.save(tiny.perturbed(model), tok, tmp_path / "ft")
    corpus = str(tiny.write_jsonl(tiny.corpus(24), tmp_path / "corpus.jsonl"))
    result = w2d.mixture(base=base, finetuned=ft, corpus=corpus, domain_column="topic",
                         max_length=32, bootstrap=10, progress=False)
    assert result.run.task == "classify-head" and set(result.mean_tokens.values()) == {1.0}
    assert sum(result.proportions().values()) == pytest.approx(1.0)
    assert result.in_units("gradient", "tokens") == pytest.approx(result.proportions())
    out = tmp_path / "out"
    assert main(["mixture", "--base", base, "--finetuned", ft, "--corpus", corpus, "--domain-column",
                 "topic", "--weighting", "tokens", "--out", str(out), "--quiet"]) == 2
    assert "for language models" in capsys.readouterr().err and not out.exists()
