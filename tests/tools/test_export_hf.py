"""tools/convert_checkpoint.py to-hf: the baseline as a transformers Llama with equal logits, the joint
tokenizer beside it, and export folders (baseline and LST) that tools/evaluate.py and tools/generate.py
load with the same scores and tokens as the original checkpoint."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers is not installed (the hubert extra)")


def tiny_config(sentencepiece_model: str, model: str = "baseline", *flags: str):
    from megatron_lst.training.arguments import parse_args

    return parse_args(["--model-flavour", "debug", "--model", model, "--tokenizer-model", sentencepiece_model,
                       "--num-units", "20", "--seq-length", "48", "--patch-size", "2", *flags])


def trained_like_model(config):
    """The run's model with every weight redrawn large, so that a mis-mapped tensor changes the logits."""
    from megatron_lst.training.registry import spec_of

    task = spec_of(config).build_task(config)
    model = task.build_model(config, True, True).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3
                            + (1.0 if parameter.dim() == 1 else 0.0))
    return task, model


def save_run(root, model, config, tokenizer) -> None:
    """A checkpoint as pretrain_lst.py writes it (weights, run config and vocabulary layout)."""
    from megatron_lst.training.checkpointing import save_checkpoint
    from megatron_lst.training.run_config import encode_saved

    save_checkpoint(root, 3, model, None, None, {"iteration": 3, "config": encode_saved(config.to_dict()),
                                                 "vocab_layout": encode_saved(tokenizer.layout())})


@needs_transformers
@pytest.mark.parametrize("groups", [None, 2], ids=["mha", "gqa"])
def test_baseline_exports_as_llama_with_equal_logits(sentencepiece_model, single_rank_parallel_state, tmp_path,
                                                     groups):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_lst.export.folder import load_exported_weights, write_export
    from tools.convert_checkpoint import tensor_state

    config = tiny_config(sentencepiece_model, "baseline", *(["--num-query-groups", str(groups)] if groups else []))
    task, model = trained_like_model(config)
    tokenizer = task.tokenizer
    folder = write_export(model, tensor_state(model), config, tokenizer, tmp_path / "hf", {"iteration": 3}, "test")

    hf_config = json.loads((folder / "config.json").read_text())
    assert hf_config["model_type"] == "llama" and hf_config["architectures"] == ["LlamaForCausalLM"]
    assert hf_config["num_key_value_heads"] == (groups or 4) and hf_config["rope_theta"] == 500000.0
    assert hf_config["vocab_size"] == 256 and hf_config["megatron_lst"]["real_vocab_size"] == tokenizer.vocab_size
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"]) == (tokenizer.bos_id, tokenizer.eos_id)

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    tokens = torch.randint(0, tokenizer.vocab_size, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens, torch.arange(19).expand_as(tokens), None)
        theirs = hf(tokens).logits
    assert ours.abs().max() > 1.0  # the comparison is not of near-zero logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)

    # a model built with transformer-engine's spec (GPU) names its norms after the fused linears: same export
    from megatron_lst.export.hf_llama import rename_norms, to_llama_state

    te_state = rename_norms(tensor_state(model), to_te=True)
    assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in te_state
    exported = to_llama_state(tensor_state(model), model.config)
    assert all(torch.equal(value, exported[name]) for name, value in to_llama_state(te_state, model.config).items())

    # the Llama names map back onto our model exactly
    _, fresh = trained_like_model(config)
    load_exported_weights(fresh, folder)
    for name, value in tensor_state(model).items():
        assert torch.equal(tensor_state(fresh)[name], value), name

    # AutoTokenizer encodes text as our tokenizer does and numbers the specials and units at the joint ids
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    for text in ("the minister said the plan", "  Police SAID, 12 fires!", "a b\tc"):
        assert hf_tokenizer(text)["input_ids"] == tokenizer.encode_text(text), text
    assert hf_tokenizer.convert_tokens_to_ids(["<|bos|>", "<|speech|>", "<|unit_0|>", "<|unit_19|>"]) == [
        tokenizer.bos_id, tokenizer.speech_marker_id, *tokenizer.encode_units([0, 19])]
    assert (hf_tokenizer.bos_token_id, hf_tokenizer.pad_token_id) == (tokenizer.bos_id, tokenizer.pad_id)
    layout = json.loads((folder / "joint_tokenizer.json").read_text())
    assert layout["ids"]["speech"] == [tokenizer.unit_offset, tokenizer.vocab_size]


def test_layernorm_baseline_is_refused_before_anything_is_written(sentencepiece_model, single_rank_parallel_state,
                                                                  tmp_path):
    from megatron_lst.export.folder import write_export
    from megatron_lst.export.hf_llama import NotLlamaShaped
    from tools.convert_checkpoint import tensor_state

    config = tiny_config(sentencepiece_model, "baseline", "--normalization", "LayerNorm")
    task, model = trained_like_model(config)
    with pytest.raises(NotLlamaShaped, match="normalization LayerNorm"):
        write_export(model, tensor_state(model), config, task.tokenizer, tmp_path / "hf", {}, "test")
    assert not (tmp_path / "hf").exists()


def test_to_hf_refuses_a_folder_that_is_not_an_earlier_export(tmp_path, capsys):
    from tools.convert_checkpoint import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["to-hf", "--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "out")]) == 2
    assert "holds no earlier export" in capsys.readouterr().err
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def evaluate_and_generate(root, tmp_path, name: str, generates: bool = True) -> tuple[list, list]:
    """tools/evaluate.py's per-item scores and tools/generate.py's tokens for ``--checkpoint root``."""
    from tools.evaluate import main as evaluate
    from tools.generate import main as generate

    benchmark = tmp_path / "benchmark.jsonl"
    stories = [("the minister said the plan", ["would cost more", "the dog barked"], [3, 4, 5], [[6, 7], [8, 9, 9]]),
               ("police said the fire", ["started at night", "three four five"], [1, 2], [[10, 11, 12], [13]])]
    benchmark.write_text("".join(json.dumps({"id": str(i), "label": 0, "prompt": {"text": text, "units": units},
                                             "endings": [{"text": t, "units": u} for t, u in zip(endings, unit_endings)]})
                                 + "\n" for i, (text, endings, units, unit_endings) in enumerate(stories)))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "text": "the minister said"}) + "\n"
                       + json.dumps({"id": "b", "units": [1, 2, 3, 4]}) + "\n")
    scores, generated = tmp_path / f"{name}.json", tmp_path / f"{name}.gen.jsonl"
    assert evaluate(["--checkpoint", str(root), "--benchmark", str(benchmark), "--directions", "tt", "ss", "ts",
                     "--output", str(scores)]) == 0
    results = json.loads(scores.read_text())["results"]
    if not generates:
        return [results[d]["items"] for d in sorted(results)], []
    assert generate(["continue", "--checkpoint", str(root), "--input", str(prompts), "--output", str(generated),
                     "--max-new-tokens", "6"]) == 0
    rows = [json.loads(line) for line in generated.read_text().splitlines()]
    return [results[d]["items"] for d in sorted(results)], [{k: v for k, v in row.items() if k != "seconds"}
                                                           for row in rows]


@pytest.mark.parametrize("model_name", ["baseline", "lst"])
def test_export_folder_evaluates_and_generates_as_the_checkpoint(sentencepiece_model, single_rank_parallel_state,
                                                                 tmp_path, model_name):
    from tools.convert_checkpoint import megatron_to_hf, write_consolidated

    config = tiny_config(sentencepiece_model, model_name)
    task, model = trained_like_model(config)
    save_run(tmp_path / "ckpt", model, config, task.tokenizer)
    folder = megatron_to_hf(str(tmp_path / "ckpt"), str(tmp_path / "export"), None, None)
    meta = json.loads((folder / "megatron_lst.json").read_text())
    assert meta["model"] == model_name and meta["weights"] == ("megatron" if model_name == "lst" else "llama")
    assert (folder / "config.json").is_file() == (model_name == "baseline")
    consolidated = write_consolidated(model, config, tmp_path / "consolidated", {"iteration": 3}, "test").parent
    original = evaluate_and_generate(tmp_path / "ckpt", tmp_path, "original")
    (tmp_path / "ckpt").rename(tmp_path / "gone")  # the export needs nothing of the run
    exported = evaluate_and_generate(folder, tmp_path, "exported")
    assert len(original[0]) == 3 and all(len(items) == 2 for items in original[0])
    assert original[1][0]["text"] and original[1][1]["units"]  # something was generated in each modality
    assert exported == original
    # a to-safetensors folder loads too (it has no tokenizer copy: the run's tokenizer file is still there)
    assert evaluate_and_generate(consolidated, tmp_path, "consolidated") == original


@needs_transformers
def test_bpe_baseline_exports_with_its_unit_bpe(sentencepiece_model, single_rank_parallel_state, tmp_path):
    """The BPE baseline's export carries the unit BPE; transformers and tools/evaluate.py both load it."""
    import random

    from transformers import AutoModelForCausalLM

    from megatron_lst.data.unit_bpe import train_unit_bpe
    from tools.convert_checkpoint import megatron_to_hf

    rng = random.Random(0)
    sequences = [[rng.randrange(20) for _ in range(rng.randint(4, 30))] for _ in range(200)]
    unit_bpe = train_unit_bpe(sequences, tmp_path / "bpe" / "units", vocab_size=40, num_units=20)
    config = tiny_config(sentencepiece_model, "bpe-baseline", "--unit-bpe", str(unit_bpe))
    task, model = trained_like_model(config)
    save_run(tmp_path / "ckpt", model, config, task.tokenizer)
    folder = megatron_to_hf(str(tmp_path / "ckpt"), str(tmp_path / "export"), None, None)
    assert (folder / "unit_bpe.model").read_bytes() == unit_bpe.read_bytes() and (folder / "unit_bpe.json").is_file()
    tokens = torch.randint(0, task.tokenizer.vocab_size, (1, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens, torch.arange(11)[None], None)
        theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()(tokens).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    original = evaluate_and_generate(tmp_path / "ckpt", tmp_path, "original", generates=False)
    (tmp_path / "ckpt").rename(tmp_path / "gone")
    unit_bpe.rename(unit_bpe.with_name("moved.model"))  # the export's own copy is used
    assert evaluate_and_generate(folder, tmp_path, "exported", generates=False) == original


@needs_transformers
@pytest.mark.slow
def test_to_hf_cli_on_a_trained_baseline(base_args, tmp_path, monkeypatch):
    """pretrain_lst.py -> convert_checkpoint.py to-hf (the CLI) -> transformers: the trained model's logits."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import free_port, run_pretrain
    from tests.tools.test_convert_checkpoint import checkpoint_logits
    from tools.convert_checkpoint import main

    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port())), ("RANK", "0"),
                        ("WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)  # the converter sets them; restored for later subprocess tests
    run_pretrain([*base_args, "--train-iters", "2", "--save", str(tmp_path / "trained")])
    assert main(["to-hf", "--load", str(tmp_path / "trained"), "--output", str(tmp_path / "hf")]) == 0
    assert main(["to-hf", "--load", str(tmp_path / "trained"), "--output", str(tmp_path / "hf")]) == 0  # replaced
    tokens = torch.randint(0, 200, (2, 17), generator=torch.Generator().manual_seed(0))
    ours = checkpoint_logits(tmp_path / "trained", "baseline", tokens)
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)(tokens[:, :-1]).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert json.loads((tmp_path / "hf" / "megatron_lst.json").read_text())["progress"]["iteration"] == 2
