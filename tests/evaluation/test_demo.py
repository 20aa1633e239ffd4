import json

import tiny

from weights2data.demo import report
from weights2data.demo.run import Hidden, run_demo
from weights2data.demo.sizes import CLASSIFY_STRATEGIES, LM_STRATEGIES, classify_sizes, lm_sizes


def _hidden(task: str) -> Hidden:
    rows = tiny.corpus(80)
    keep = ("text", "label") if task != "lm" else ("text",)
    pick = lambda rs: [{k: r[k] for k in keep} for r in rs]  # noqa: E731
    seed = [{"text": r["text"], "source": f"src{i % 3}"} for i, r in enumerate(tiny.corpus(60, seed=3))]
    return Hidden(task, pick(rows[:30]), pick(rows[30:45]), seed,
                  tiny.LABELS if task != "lm" else None)


def _writer(build):
    def write(folder):
        model, tok = build()
        tiny.save(model, tok, folder)
    return write


def test_classify_demo_smoke_and_cache(tmp_path):
    """The demo's code path on tiny models: every strategy, oracle, expert, OT and leakage;
    a second run only reads the cache."""
    sizes = classify_sizes("smoke")
    sizes.leak = 0.2
    sizes.variants = {"select head init zeros": {"head_init": "zeros"}}
    logs: list[str] = []
    first = run_demo(_hidden("classify-head"), _writer(tiny.bert_classifier), sizes, tmp_path,
                     CLASSIFY_STRATEGIES, progress=False, log=logs.append)
    assert set(first["strategies"]) == {*CLASSIFY_STRATEGIES, "select head init zeros"}
    k = str(sizes.ks[0])
    for per_k in first["strategies"].values():
        e = per_k[k]
        assert 0 <= e["mean"] <= 100 and e["ot"] >= 0 and len(e["values"]) == sizes.seeds
        assert abs(sum(e["labels"].values()) - 1) < 1e-9
        assert 1 / len(tiny.LABELS) <= e["label_confidence"] <= 1  # θf's argmax probability
        assert "leakage" in e and 0 <= e["leakage"]["recall"] <= 1
        assert set(e["sources"]) <= {"src0", "src1", "src2", "bbc (leaked)"}
    assert first["documents"]["leaked"] == 6 and first["documents"]["seed_corpus"] == 66
    assert first["select"]["select head init zeros"]["head_init"] == "zeros"
    assert first["oracle"][k]["ot"] >= 0 and 0 <= first["expert"] <= 100
    assert not first["cached_stages"]

    logs.clear()
    second = run_demo(_hidden("classify-head"), _writer(tiny.bert_classifier), sizes, tmp_path,
                      CLASSIFY_STRATEGIES, progress=False, log=logs.append)
    assert all(line.startswith("[cached]") for line in logs), logs
    assert "retrain + measure" in second["cached_stages"]
    assert "fine-tune expert θf" in second["cached_stages"]
    assert second["strategies"] == first["strategies"] and second["oracle"] == first["oracle"]

    text = report.table(second)
    assert "select" in text and "oracle" in text and "expert" in text and "conf" in text
    report.write_html(second, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3
    json.dumps(second)  # results.json must serialise


def test_lm_demo_smoke(tmp_path):
    sizes = lm_sizes("smoke")
    res = run_demo(_hidden("lm"), _writer(tiny.gpt2_lm), sizes, tmp_path, LM_STRATEGIES,
                   progress=False, log=lambda _: None)
    assert res["metric"] == "perplexity" and res["lower_is_better"]
    k = str(sizes.ks[0])
    for name in [*LM_STRATEGIES]:
        assert res["strategies"][name][k]["mean"] > 1
    assert res["oracle"][k]["mean"] > 1 and res["expert"] < res["base"]
    assert "labels" not in res["strategies"]["select"][k]
    assert "conf" not in report.table(res)


def test_variants_are_relative_to_the_main_run():
    from weights2data.demo.sizes import select_variants

    for p in (1, 3, 5):
        variants = select_variants(p)
        assert p not in [v.get("checkpoints") for v in variants.values()]
        assert len([v for v in variants.values() if "checkpoints" in v]) == 2
    full = lm_sizes("full")
    assert full.checkpoints not in [v.get("checkpoints") for v in full.variants.values()]


def test_demo_cli_refuses_bad_sizes(capsys):
    from weights2data.cli import main

    assert main(["demo", "--leak", "1.5", "--quiet"]) == 2
    assert "--leak is a fraction" in capsys.readouterr().err
    assert main(["demo", "--seeds", "0", "--quiet"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
