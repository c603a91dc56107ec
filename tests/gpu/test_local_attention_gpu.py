"""LST's local attention fast paths on CUDA (FlexAttention and blocked SDPA) equal the dense reference.

Skipped without CUDA. Run by ``tests/gpu/run_all.sh``.
"""

from __future__ import annotations

import pytest
import torch

from megatron_lst.models.interval_attention import IntervalMask, interval_attention, resolve_implementation
from tests.models.test_interval_attention import random_intervals

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def outputs_and_grads(implementation: str, mask: IntervalMask, tensors: list[torch.Tensor]):
    for tensor in tensors:
        tensor.grad = None
    context = interval_attention(*tensors, mask, 0.125, implementation)
    weights = torch.linspace(-1.0, 1.0, context.numel(), device=context.device).view_as(context)
    (context.float() * weights).sum().backward()
    return context.detach().float(), [tensor.grad.float().clone() for tensor in tensors]


def test_auto_picks_flex_on_cuda():
    assert resolve_implementation("auto", torch.device("cuda")) == "flex"


@pytest.mark.parametrize("implementation", ["flex", "blocked"])
@pytest.mark.parametrize("num_queries,num_keys", [(1000, 1000), (777, 300), (256, 1024)])
def test_fast_paths_equal_dense_on_cuda_fp32(implementation, num_queries, num_keys):
    generator = torch.Generator().manual_seed(num_queries)
    lo, hi = random_intervals(2, num_queries, num_keys, generator, max_width=200)
    empty = torch.rand(2, num_queries, generator=generator) < 0.05
    mask = IntervalMask(lo.cuda(), hi.cuda(), num_keys, 128, empty=empty.cuda())
    tensors = [torch.randn(n, 2, 4, 64, device="cuda", generator=None, requires_grad=True)
               for n in (num_queries, num_keys, num_keys)]
    dense, dense_grads = outputs_and_grads("dense", mask, tensors)
    fast, fast_grads = outputs_and_grads(implementation, mask, tensors)
    torch.testing.assert_close(fast, dense, atol=2e-5, rtol=2e-5)
    for got, expected in zip(fast_grads, dense_grads):
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


def test_flex_equals_dense_in_bf16():
    generator = torch.Generator().manual_seed(3)
    lo, hi = random_intervals(2, 2048, 2048, generator, max_width=512)
    mask = IntervalMask(lo.cuda(), hi.cuda(), 2048)
    tensors = [torch.randn(2048, 2, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    dense, dense_grads = outputs_and_grads("dense", mask, tensors)
    flex, flex_grads = outputs_and_grads("flex", mask, tensors)
    assert (flex - dense).norm() / dense.norm() < 2e-2
    for got, expected in zip(flex_grads, dense_grads):
        assert (got - expected).norm() / expected.norm() < 5e-2


def test_lst_forward_backward_on_cuda_equals_dense(gpu_parallel_state):
    """The whole LST on CUDA: FlexAttention local paths against the dense reference (fp32)."""
    from megatron_lst.models.config import model_flavour
    from megatron_lst.models.lst import LSTModel, lst_transformer_configs
    from tests.models.test_local_attention_paths import OVERRIDES, VOCAB, forward_backward, random_batch

    torch.manual_seed(0)
    shape = model_flavour("debug", **OVERRIDES)
    model = LSTModel(shape, *lst_transformer_configs(shape), vocab_size=VOCAB).cuda()
    batch = {name: value.cuda() for name, value in random_batch(seed=5).items()}
    reference_loss, reference_grads = forward_backward(model, batch, "dense")
    loss, grads = forward_backward(model, batch, "auto")
    torch.testing.assert_close(loss, reference_loss, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-5, rtol=1e-5, msg=name)
