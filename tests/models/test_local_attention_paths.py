"""The LST with its interval-attention fast path equals the dense-mask reference, forward and backward.

Random patchings (static and aligned), two documents per row, right padding merged into one patch,
windows shorter than the rows (local self-attention, encoder and decoder cross-attention), and k
query vectors per patch; fp32, outputs and every parameter gradient to 1e-5; also at TP = 2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_lst.models.config import model_flavour
from megatron_lst.models.lst import LSTModel, lst_transformer_configs
from tests.models.test_lst import VOCAB, random_sample, training_batch

OVERRIDES = dict(local_window_size=5, cross_attn_window_encoder=3, cross_attn_window_decoder=4, cross_attn_k=2,
                 encoder_num_layers=2, decoder_num_layers=2)


def random_batch(seed: int, strategy: str = "aligned") -> dict:
    """Three rows of two documents each, of different lengths, as the collate patches them."""
    rng = np.random.default_rng(seed)
    samples = [random_sample(rng, length, True) for length in (57, 23, 40)]
    for sample in samples:
        sample["num_positions"] = 0
    return training_batch(samples, strategy)


def forward_backward(model: LSTModel, batch: dict, implementation: str) -> tuple[torch.Tensor, dict]:
    model.patch_encoder.attention_implementation = implementation
    model.patch_decoder.attention_implementation = implementation
    model.zero_grad(set_to_none=True)
    loss = model(batch["inputs"], batch["patch_lengths"], labels=batch["labels"], document_ids=batch["documents"])
    weights = torch.linspace(0.5, 1.5, loss.numel(), device=loss.device).view_as(loss)
    (loss * weights).sum().backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def compare_paths(model: LSTModel, batch: dict) -> dict[str, float]:
    """Largest absolute difference (fast path - dense reference) in the loss and the gradients."""
    reference_loss, reference_grads = forward_backward(model, batch, "dense")
    loss, grads = forward_backward(model, batch, "auto")
    assert grads.keys() == reference_grads.keys() and len(grads) > 10
    return {
        "loss": float((loss - reference_loss).abs().max()),
        "gradients": max(float((grads[name] - reference_grads[name]).abs().max()) for name in grads),
        "gradient_scale": max(float(g.abs().max()) for g in reference_grads.values()),
    }


@pytest.fixture(scope="module")
def model_parallel(single_rank_parallel_state):
    yield


@pytest.mark.parametrize("strategy", ["static", "aligned"])
@pytest.mark.parametrize("overrides", [OVERRIDES, dict(local_window_size=512, cross_attn_window_decoder=0),
                                       dict(local_window_size=1, cross_attn_window_encoder=0,
                                            cross_attn_window_decoder=1)])
def test_fast_path_equals_dense_reference(model_parallel, strategy, overrides):
    torch.manual_seed(0)
    shape = model_flavour("debug", **overrides)
    model = LSTModel(shape, *lst_transformer_configs(shape), vocab_size=VOCAB)
    differences = compare_paths(model, random_batch(seed=5, strategy=strategy))
    assert differences["loss"] < 1e-5 and differences["gradients"] < 1e-5, differences
    assert differences["gradient_scale"] > 1e-3  # the comparison is not of zeros


def test_fast_path_equals_dense_reference_at_tensor_parallel_two(tmp_path):
    from tests.conftest import REPO_ROOT, run_tensor_parallel_worker

    differences = run_tensor_parallel_worker(REPO_ROOT / "tests/models/local_attention_worker.py",
                                             tmp_path / "differences.json", timeout=300)
    assert differences["loss"] < 1e-5 and differences["gradients"] < 1e-5, differences
    assert differences["gradient_scale"] > 1e-3


def test_the_kernel_flag_reaches_both_local_modules(model_parallel, tmp_path):
    from megatron_lst.tokenizer import JointTokenizer, train_sentencepiece
    from megatron_lst.training.arguments import parse_args
    from megatron_lst.training.lst_task import LSTTask

    lines = [f"the speech unit {i} follows the text token {i * 7}" for i in range(200)]
    tokenizer = JointTokenizer.from_file(str(train_sentencepiece(lines, tmp_path / "spm", vocab_size=60)))
    config = parse_args(["--model", "lst", "--model-flavour", "debug", "--local-attention-impl", "blocked"])
    model = LSTTask(config, tokenizer).build_model(config, pre_process=True, post_process=True)
    assert model.patch_encoder.attention_implementation == "blocked"
    assert model.patch_decoder.attention_implementation == "blocked"
    with pytest.raises(SystemExit):
        parse_args(["--model", "lst", "--local-attention-impl", "dense"])  # the reference is for tests only
