"""PEFT LoRA adapters: kept low-rank (ΔW = s·B A), interpolated exactly, selected from with
default options although the head is untouched, and refused when they are not plain LoRA."""

import json

import pytest
import tiny
import torch
from peft import LoraConfig, get_peft_model

from weights2data import select
from weights2data.checkpoints import load_pair
from weights2data.config import ModelConfig
from weights2data.evaluation import Recipe, train
from weights2data.framings import make_framing
from weights2data.gradients import Interpolation, resolve

PLANTED = "sport"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A tiny Llama and a LoRA adapter (r = 8 on q/v, head untouched) trained on sport only."""
    d = tmp_path_factory.mktemp("lora")
    model, tok = tiny.llama_lm()
    model = tiny.perturbed(model, 0.2)  # a 'pretrained' base: not at init
    base = tiny.save(model, tok, d / "base")
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0))
    rows = [r for r in tiny.corpus(90, seed=3) if r["topic"] == PLANTED]
    framing = make_framing("lm", tok, 32, ModelConfig(base, base))
    train(peft_model, framing, [r["text"] for r in rows], None,
          Recipe(steps=60, lr=3e-2, batch_size=8), progress=False)
    peft_model.save_pretrained(d / "adapter")
    corpus = tiny.write_jsonl(tiny.corpus(45, seed=11), d / "corpus.jsonl")
    return d, base, str(d / "adapter"), str(corpus)


def test_adapter_factors_are_the_merged_difference(lora_run):
    _, base, adapter, _ = lora_run
    pair = load_pair(ModelConfig(base, adapter, task="lm"))
    assert len(pair.adapter) == 4  # q and v of two blocks
    b, f = dict(pair.base.named_modules()), dict(pair.finetuned.named_modules())
    for name, (a, bb, s) in pair.adapter.items():
        assert a.shape[0] == 8 and bb.shape[1] == 8
        delta = f[name].weight - b[name].weight
        torch.testing.assert_close(delta, s * bb @ a, rtol=1e-4, atol=1e-6)
    assert torch.equal(pair.base.lm_head.weight, pair.finetuned.lm_head.weight)


@pytest.mark.parametrize("stream", [False, True])
def test_interpolated_checkpoints_are_exactly_on_the_line(lora_run, stream):
    _, base, adapter, _ = lora_run
    pair = load_pair(ModelConfig(base, adapter, task="lm"))
    # a full-model change beside the adapter, to exercise the copy and the streamed paths
    with torch.no_grad():
        pair.finetuned.model.layers[1].mlp.up_proj.weight.add_(0.3)
        pair.finetuned.model.norm.weight.add_(0.2)
    framing = make_framing("lm", pair.tokenizer, 32, ModelConfig(base, adapter))
    path = Interpolation(pair.base, pair.finetuned, "lm_head", pair.adapter, stream=stream)
    batch = framing.encode([r["text"] for r in tiny.corpus(4)])
    b, f = pair.base.state_dict(), pair.finetuned.state_dict()
    alpha = 0.3
    reference = tiny.llama_lm()[0]
    reference.load_state_dict({k: b[k] + alpha * (f[k] - b[k]) for k in b})
    with torch.no_grad():
        expected = reference(**batch).logits
        with path.at(alpha) as model:
            got = model(**batch).logits
        after = pair.base(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    reference.load_state_dict(b)
    with torch.no_grad():  # θ0 is back once the block ends
        torch.testing.assert_close(after, reference(**batch).logits, rtol=1e-5, atol=1e-6)


def test_lora_adapter_selects_with_default_options_and_finds_planted_documents(lora_run, tmp_path):
    _, base, adapter, corpus = lora_run
    result = select(base=base, finetuned=adapter, corpus=corpus, k=10,
                    strategies=["select", "random"], progress=False, out=str(tmp_path / "o"))
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert {la["name"] for la in manifest["layers"]} == {
        f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qv"}
    assert all(la["target"] == "low-rank" for la in manifest["layers"])
    topics = [r["topic"] for r in tiny.corpus(45, seed=11)]
    first = [topics[i] for i in result.selections["select"].indices[:10]]
    assert first.count(PLANTED) >= 7, first  # a third of the corpus is sport: chance is 3.3


def test_unsupported_adapters_are_refused(lora_run, tmp_path, capsys):
    from weights2data.cli import main

    _, base, adapter, corpus = lora_run
    config = json.loads(open(f"{adapter}/adapter_config.json").read())

    def run(cfg: dict, name: str) -> str:
        folder = tmp_path / name
        folder.mkdir()
        weights = "adapter_model.safetensors"
        (folder / weights).write_bytes(open(f"{adapter}/{weights}", "rb").read())
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
        code = main(["select", "--base", base, "--finetuned", str(folder), "--corpus", corpus,
                     "--k", "2", "--out", str(tmp_path / f"out-{name}"), "--quiet"])
        assert code == 2
        return capsys.readouterr().err

    assert "DoRA adapter" in run({**config, "use_dora": True}, "dora")
    assert "is a IA3 PEFT adapter" in run({**config, "peft_type": "IA3"}, "ia3")
    assert "trains biases" in run({**config, "bias": "all"}, "bias")
    assert "was trained on other/llama" in run({**config, "base_model_name_or_path": "other/llama"},
                                               "other")


def test_adapter_for_another_shape_names_the_mismatch(lora_run, tmp_path, capsys):
    from weights2data.cli import main

    _, _, adapter, corpus = lora_run
    model, tok = tiny.llama_lm()
    model.config.hidden_size = 32
    wider = tiny.save(type(model)(model.config), tok, tmp_path / "wider")
    code = main(["select", "--base", wider, "--finetuned", adapter, "--corpus", corpus, "--k", "2",
                 "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert "size mismatch" in capsys.readouterr().err


def test_layers_resolve_to_the_adapter_modules(lora_run):
    _, base, adapter, _ = lora_run
    pair = load_pair(ModelConfig(base, adapter, task="lm"))
    framing = make_framing("lm", pair.tokenizer, 32, ModelConfig(base, adapter))
    for spec in (["auto"], ["changed"], ["adapter"]):
        names = [la.name for la in resolve(spec, framing, pair.base, pair.finetuned, pair.adapter).layers]
        assert names == [f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qv"]
