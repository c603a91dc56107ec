"""The transformer-engine spec over packed documents (THD) against the SDPA document-mask reference.

The TE spec's core attention drops a document mask (it reads ``attention_mask`` only for
padding/arbitrary mask types), so the LST's global model and the baseline pack their documents on
GPU (``models/packed_sequences.py``). These tests hold that path to the CPU-verified reference: the
same weights in megatron's local spec with SDPA and the [B, 1, S, S] mask, in fp32. TE runs in bf16
(its varlen flash/fused kernels take no fp32), compared with bf16 tolerances; fp32 is tried too and
skipped with TE's reason where no TE attention backend takes fp32 THD. Documents must never attend
across a pack boundary: changing one document leaves every other output where it was.

Run on a GPU machine with transformer-engine: ``pytest -m gpu tests/gpu/test_te_packed.py``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None, reason="needs transformer-engine"),
]

BF16_OUTPUT = 2e-2  # relative L2 error of bf16 TE outputs against the fp32 reference
BF16_GRADIENT = 5e-2  # relative L2 error of all parameter gradients together
FP32 = 1e-3  # TE may run fp32 GEMMs in TF32

# the TE spec fuses the pre-attention and pre-MLP norms into the following linear
TE_NAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}


def te_name(name: str, te_prefix: str = "") -> str:
    """The TE model's name of a reference parameter; only modules under ``te_prefix`` use the TE
    spec (the LST's local modules keep the local spec in both models)."""
    if not name.startswith(te_prefix):
        return name
    for suffix, replacement in TE_NAMES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)] + replacement
    return name


@torch.no_grad()
def randomize_norms(module: torch.nn.Module, seed: int) -> None:
    """Norm scales are 1 at init; random ones make the TE name mapping matter."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if param.dim() == 1 and "norm" in name:
            param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))


@torch.no_grad()
def copy_into_te(reference: torch.nn.Module, te_module: torch.nn.Module, te_prefix: str = "") -> None:
    """Every reference parameter into its TE counterpart; every TE parameter must be covered."""
    targets = dict(te_module.named_parameters())
    assigned = set()
    for name, param in reference.named_parameters():
        target = te_name(name, te_prefix)
        if target not in targets:
            raise AssertionError(f"{name} -> {target}: no such TE parameter (TE has {sorted(targets)})")
        targets[target].copy_(param.to(targets[target].dtype))
        assigned.add(target)
    missing = sorted(set(targets) - assigned)
    assert not missing, f"TE parameters with no reference counterpart: {missing}"


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.float()
    return float((got.float() - expected).norm() / expected.norm().clamp_min(1e-12))


def gradient_error(reference: torch.nn.Module, te_module: torch.nn.Module, te_prefix: str = "",
                   only: str = "") -> float:
    """Relative L2 error of the parameter gradients (those named ``only...``) taken together."""
    te_grads = {name: p.grad for name, p in te_module.named_parameters()}
    squared_error, squared_norm = 0.0, 0.0
    for name, param in reference.named_parameters():
        if not name.startswith(only):
            continue
        got = te_grads[te_name(name, te_prefix)]
        assert got is not None and torch.isfinite(got).all(), name
        squared_error += float((got.float() - param.grad.float()).norm() ** 2)
        squared_norm += float(param.grad.float().norm() ** 2)
    return (squared_error / squared_norm) ** 0.5


def global_blocks(bf16: bool = True):
    """(fp32 SDPA reference block, TE block with the same weights, rotary embedding), on the GPU."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.transformer.transformer_block import TransformerBlock

    from megatron_lst.models.config import model_flavour
    from megatron_lst.models.specs import gpt_layer_spec, transformer_config

    shape = model_flavour("debug", num_query_groups=2)
    reference_config = transformer_config(shape, num_query_groups=2)
    te_config = transformer_config(shape, num_query_groups=2, bf16=bf16)
    torch.manual_seed(0)
    reference = TransformerBlock(config=reference_config, spec=gpt_layer_spec(False, shape.normalization)).cuda()
    te_block = TransformerBlock(config=te_config, spec=gpt_layer_spec(True, shape.normalization)).cuda()
    randomize_norms(reference, seed=1)
    copy_into_te(reference, te_block)
    rotary = RotaryEmbedding(kv_channels=reference_config.kv_channels, rotary_percent=1.0,
                             rotary_base=int(shape.rotary_base))
    return reference, te_block, rotary


def run_block(block, rotary, hidden, documents, packed: bool):
    from tests.models.test_packed_sequences import block_forward

    return block_forward(block, rotary, hidden, documents, packed)


def test_te_global_block_packed_equals_the_sdpa_mask_reference_bf16(gpu_parallel_state):
    from tests.models.test_packed_sequences import random_document_ids

    reference, te_block, rotary = global_blocks(bf16=True)
    for seed in range(3):
        documents = random_document_ids(np.random.default_rng(seed), 4, 57).cuda()
        generator = torch.Generator().manual_seed(seed)
        hidden = torch.randn(57, 4, reference.config.hidden_size, generator=generator).cuda()
        weights = torch.randn(57, 4, reference.config.hidden_size, generator=generator).cuda()
        inside = (documents >= 0).T[:, :, None].float()
        outputs = []
        for block, packed, dtype in ((reference, False, torch.float32), (te_block, True, torch.bfloat16)):
            block.zero_grad(set_to_none=True)
            output = run_block(block, rotary, hidden.to(dtype), documents, packed).float()
            ((output * weights * inside).sum() / inside.sum()).backward()
            outputs.append(output.detach() * inside)
        assert relative_error(outputs[1], outputs[0]) < BF16_OUTPUT
        assert gradient_error(reference, te_block) < BF16_GRADIENT


def test_te_global_block_packed_equals_the_sdpa_mask_reference_fp32(gpu_parallel_state):
    from tests.models.test_packed_sequences import random_document_ids

    reference, te_block, rotary = global_blocks(bf16=False)
    documents = random_document_ids(np.random.default_rng(5), 3, 40).cuda()
    hidden = torch.randn(40, 3, reference.config.hidden_size, generator=torch.Generator().manual_seed(5)).cuda()
    inside = (documents >= 0).T[:, :, None].float()
    with torch.no_grad():
        expected = run_block(reference, rotary, hidden, documents, packed=False) * inside
        try:
            got = run_block(te_block, rotary, hidden, documents, packed=True) * inside
        except (ValueError, RuntimeError, AssertionError) as error:
            if "backend" in str(error).lower():
                pytest.skip(f"transformer-engine has no fp32 attention backend for THD here: {error}")
            raise
    assert relative_error(got, expected) < FP32


def test_te_global_block_keeps_documents_apart(gpu_parallel_state):
    """One document changed: its own outputs move from the change on, no other document's or row's
    (the TE causal spec fed a document mask instead of packing would move the later ones)."""
    _, te_block, rotary = global_blocks(bf16=True)
    te_block.eval()
    documents = torch.tensor([[0] * 20 + [1] * 25 + [2] * 19, [0] * 40 + [1] * 24]).cuda()
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(64, 2, te_block.config.hidden_size, generator=generator).cuda().bfloat16()
    changed = hidden.clone()
    changed[22, 0] += torch.randn(te_block.config.hidden_size, generator=generator).cuda().bfloat16()
    with torch.no_grad():
        moved = (run_block(te_block, rotary, changed, documents, True)
                 - run_block(te_block, rotary, hidden, documents, True)).float().abs().amax(-1)
    assert float(moved[22:45, 0].min()) > 1e-3
    untouched = torch.ones_like(moved, dtype=torch.bool)
    untouched[22:45, 0] = False
    # exact: same shapes and cu_seqlens, and every kernel computes a sequence from its own rows only
    assert float(moved[untouched].max()) == 0.0


def lst_models():
    """(fp32 SDPA reference LST with the document mask, bf16 TE LST that packs its global model)."""
    from megatron_lst.models.config import model_flavour
    from megatron_lst.models.lst import LSTModel, lst_transformer_configs

    from tests.models.test_packed_sequences import VOCAB

    shape = model_flavour("debug", local_window_size=6)
    torch.manual_seed(0)
    reference = LSTModel(shape, *lst_transformer_configs(shape), vocab_size=VOCAB, use_te=False).cuda()
    te_model = LSTModel(shape, *lst_transformer_configs(shape, bf16=True), vocab_size=VOCAB, use_te=True).cuda()
    assert te_model.pack_global and not reference.pack_global
    randomize_norms(reference, seed=2)
    copy_into_te(reference, te_model, te_prefix="global_block.")
    return reference, te_model


def test_te_lst_global_model_equals_the_sdpa_mask_reference(gpu_parallel_state):
    """LSTModel's global step (packing by patch document, rotary per document, unpacking) under the
    TE spec vs the masked SDPA block, on an LST batch's patch lengths and documents."""
    from tests.models.test_packed_sequences import lst_batch

    from megatron_lst.models.lst import global_packing_documents

    reference, te_model = lst_models()
    batch = {k: v.cuda() for k, v in lst_batch(0).items()}
    patch_lengths, documents = batch["patch_lengths"], batch["documents"]
    num_patches = patch_lengths.shape[1]
    kept = (global_packing_documents(patch_lengths, documents) >= 0).T[:, :, None].float()
    generator = torch.Generator().manual_seed(4)
    states = torch.randn(num_patches, patch_lengths.shape[0], reference.global_width, generator=generator).cuda()
    weights = torch.randn(states.shape, generator=generator).cuda()
    outputs = []
    for model, dtype in ((reference, torch.float32), (te_model, torch.bfloat16)):
        model.zero_grad(set_to_none=True)
        output = model._global_forward(states.to(dtype), patch_lengths, documents).float()
        ((output * weights * kept).sum() / kept.sum()).backward()
        outputs.append(output.detach() * kept)
    assert relative_error(outputs[1], outputs[0]) < BF16_OUTPUT
    assert gradient_error(reference, te_model, te_prefix="global_block.", only="global_block.") < BF16_GRADIENT


def test_te_lst_forward_equals_the_sdpa_mask_reference(gpu_parallel_state):
    """The whole LST (local modules as the GPU runs them, global model under TE, packed)."""
    from tests.models.test_packed_sequences import lst_batch

    reference, te_model = lst_models()
    batch = {k: v.cuda() for k, v in lst_batch(1).items()}
    losses = []
    for model in (reference, te_model):
        model.zero_grad(set_to_none=True)
        loss = model(batch["inputs"], batch["patch_lengths"], labels=batch["labels"], document_ids=batch["documents"])
        ((loss * batch["loss_mask"]).sum() / batch["loss_mask"].sum()).backward()
        losses.append((loss * batch["loss_mask"]).detach().float())
    assert relative_error(losses[1], losses[0]) < BF16_OUTPUT
    assert gradient_error(reference, te_model, te_prefix="global_block.") < BF16_GRADIENT


def baseline_models():
    from megatron_lst.models.baseline import build_baseline_model
    from megatron_lst.models.config import model_flavour
    from megatron_lst.models.specs import transformer_config

    from tests.models.test_packed_sequences import VOCAB

    shape = model_flavour("debug")
    torch.manual_seed(0)
    reference = build_baseline_model(shape, transformer_config(shape, num_query_groups=2), VOCAB,
                                     max_sequence_length=64, use_te=False).cuda()
    te_model = build_baseline_model(shape, transformer_config(shape, num_query_groups=2, bf16=True), VOCAB,
                                    max_sequence_length=64, use_te=True).cuda()
    randomize_norms(reference, seed=3)
    copy_into_te(reference, te_model, te_prefix="decoder.")
    return reference, te_model


def test_te_baseline_packed_equals_the_sdpa_mask_reference(gpu_parallel_state):
    """BaselineTask's packed micro-batch through the TE GPTModel vs the masked batch through SDPA."""
    from tests.models.test_packed_sequences import LAYOUT, baseline_step, random_samples

    from megatron_lst.training.baseline_task import packed_to_gpt_batch

    reference, te_model = baseline_models()
    samples = random_samples(3, (60, 41, 52, 33))
    losses = []
    for model, pack in ((reference, False), (te_model, True)):
        batch = packed_to_gpt_batch(samples, pad_id=LAYOUT.pad_id, length=61, pack=pack)
        model.zero_grad(set_to_none=True)
        per_token, loss_sum = baseline_step(model, batch)
        (loss_sum / batch["loss_mask"].sum()).backward()
        losses.append(per_token.detach().float().cpu())
    assert relative_error(losses[1], losses[0]) < BF16_OUTPUT
    assert gradient_error(reference, te_model, te_prefix="decoder.") < BF16_GRADIENT


def test_te_baseline_keeps_documents_apart(gpu_parallel_state):
    from tests.models.test_packed_sequences import packed_baseline_logit_moves, random_samples

    _, te_model = baseline_models()
    moved, in_first = packed_baseline_logit_moves(te_model.eval(), random_samples(8, (60, 60)), 61, "cuda")
    assert float(moved[in_first].max()) > 1e-3
    assert float(moved[~in_first].max()) == 0.0, "a token moved logits outside its own document"
