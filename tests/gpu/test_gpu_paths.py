"""GPU paths: NCCL collectives, TE layer spec, bf16, the distributed optimizer, recompute, PP, SP, DeepSpeed.

Skipped without CUDA (CPU CI); on a GPU machine ``tests/gpu/run_all.sh`` runs every test of this
folder. The data is a synthetic speech + text corpus built once per module (random words and
aligned units, a SentencePiece model trained on them, ``tools/preprocess_data.py``), so nothing
beyond the project's own dependencies is needed (the shared ``text_corpus`` fixture reads text from
the gensim wheel, which NGC images do not carry). The fp32 single-GPU reference run is trained once
and shared by the tests that compare against it. The multi-GPU cases skip on fewer than two GPUs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, free_port, read_metrics, run_pretrain

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
STEPS = ["--train-iters", "4"]


def build_synthetic_corpus(folder: Path, documents: int = 200, seed: int = 0) -> tuple[str, str, str]:
    """(tokenizer model, speech prefix, text prefix) of a small random speech + text corpus in ``folder``."""
    from megatron_lst.data.synthetic import random_aligned_records, random_sentence
    from megatron_lst.tokenizer import train_sentencepiece

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sentences = [random_sentence(rng, rng.randint(5, 120)) for _ in range(documents)]
    tokenizer = str(train_sentencepiece(sentences, folder / "spm", vocab_size=120))
    (folder / "text.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences))
    records = random_aligned_records(documents, seed=seed + 1, max_words=80)
    (folder / "speech.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for name, extra in (("speech", []), ("text", ["--append-eod"])):
        subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "preprocess_data.py"), "--input",
                        str(folder / f"{name}.jsonl"), "--output-prefix", str(folder / name),
                        "--tokenizer-model", tokenizer, "--quiet", *extra], check=True, cwd=REPO_ROOT)
    return tokenizer, str(folder / "speech_speech_document"), str(folder / "text_text_document")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, str, str]:
    return build_synthetic_corpus(tmp_path_factory.mktemp("gpu_corpus"))


@pytest.fixture(scope="module")
def gpu_args(corpus, tmp_path_factory) -> list[str]:
    """A tiny debug baseline run on the synthetic text corpus (this module's ``base_args``)."""
    tokenizer, _, text = corpus
    return [
        "--model-flavour", "debug", "--model", "baseline",
        "--data-path", text, "--tokenizer-model", tokenizer,
        "--data-cache-path", str(tmp_path_factory.mktemp("index_cache")),
        "--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--lr", "1e-3", "--lr-warmup-iters", "2", "--log-interval", "1",
        "--eval-interval", "1000", "--eval-iters", "1", "--seed", "7",
    ]


@pytest.fixture(scope="module")
def blend_args(corpus, gpu_args) -> list[str]:
    """``gpu_args`` on the 33:67 speech-text / text blend (packed interleaved samples)."""
    _, speech, text = corpus
    args = list(gpu_args)
    at = args.index("--data-path")
    return [*args[:at + 1], "0.33", speech, "0.67", text, *args[at + 2:]]


def losses(path) -> list[float]:
    return [row["lm_loss"] for _, row in sorted(read_metrics(path).items())]


def run_losses(args: list[str], folder: Path, name: str, nproc: int = 1) -> list[float]:
    log = folder / f"{name}.jsonl"
    run_pretrain([*args, *STEPS, "--log-json", str(log)], nproc=nproc)
    values = losses(log)
    assert len(values) == 4 and all(math.isfinite(v) for v in values), values
    return values


@pytest.fixture(scope="module")
def fp32_losses(gpu_args, tmp_path_factory) -> list[float]:
    """The plain fp32 single-GPU run the other variants are compared with (trained once)."""
    return run_losses(gpu_args, tmp_path_factory.mktemp("fp32"), "fp32")


# ------------------------------------------------------------------------------ NCCL collectives
@pytest.mark.parametrize("model", ["baseline", "lst"])
def test_training_collectives_take_cuda_tensors_over_nccl(blend_args, tmp_path, monkeypatch, model):
    """The CPU test of tests/training/test_collectives.py, over NCCL: every collective of a training
    run (steps, validation, SIGUSR1 stop, checkpoint save, resume) on the rank's CUDA device."""
    from tests.training.test_collectives import describe, run_recorded_training, training_args

    args = training_args(blend_args, tmp_path, model)
    recorder, state = run_recorded_training(args, monkeypatch, signal_during_step=2)
    assert state.iteration == 2
    ours = [call for call in recorder.calls if call.issuer == "wrapper"]
    assert ours and all(call.backend == "nccl" for call in ours), describe(ours)
    assert not recorder.raw_project_calls(), describe(recorder.raw_project_calls())
    assert not recorder.calls_on_wrong_devices(), describe(recorder.calls_on_wrong_devices())
    reductions = [call for call in ours if call.name == "all_reduce"]
    assert reductions and all(d.type == "cuda" for call in reductions for d in call.devices), describe(reductions)

    resumed, state = run_recorded_training([*args, "--load", str(tmp_path / "ckpt"), "--train-iters", "3",
                                            "--override-opt-param-scheduler"],
                                           monkeypatch, signal_during_step=0)
    assert state.iteration == 3
    assert not resumed.raw_project_calls(), describe(resumed.raw_project_calls())
    assert not resumed.calls_on_wrong_devices(), describe(resumed.calls_on_wrong_devices())


def test_wrapper_refuses_a_tensor_on_another_cuda_device_or_the_cpu(monkeypatch):
    from megatron_lst.training import collectives
    from megatron_lst.training.initialize import destroy_distributed, initialize_distributed

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    initialize_distributed(1, 1, seed=3)
    try:
        assert collectives.group_device() == torch.device("cuda", torch.cuda.current_device())
        with pytest.raises(RuntimeError, match="'nccl'"):
            collectives.all_reduce(torch.ones(1))
        if torch.cuda.device_count() > 1:
            other = (torch.cuda.current_device() + 1) % torch.cuda.device_count()
            with pytest.raises(RuntimeError, match=f"cuda:{other}"):
                collectives.all_reduce(torch.ones(1, device=f"cuda:{other}"))
        assert collectives.all_reduce_values([2.0, 3.0]) == [2.0, 3.0]
        assert collectives.broadcast_object({"names": ["lm loss"]}, src=0) == {"names": ["lm loss"]}
        collectives.barrier()
    finally:
        destroy_distributed()


# ------------------------------------------------------------------------------ layers and precision
@pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None, reason="needs transformer-engine")
def test_te_spec_forward_backward(monkeypatch):
    from megatron_lst.models.baseline import build_baseline_model
    from megatron_lst.models.config import model_flavour
    from megatron_lst.models.specs import transformer_config
    from megatron_lst.training.initialize import destroy_distributed, initialize_distributed

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    initialize_distributed(1, 1, seed=3)
    try:
        shape = model_flavour("debug")
        # no DDP here, so no ``main_grad`` buffers: weight-gradient fusion (on when apex is present) needs them
        config = transformer_config(shape, gradient_accumulation_fusion=False)
        model = build_baseline_model(shape, config, vocab_size=256, max_sequence_length=32, use_te=True).cuda()
        assert any("layer_norm_weight" in name for name, _ in model.named_parameters())  # TE's fused norm+linear
        tokens = torch.randint(0, 256, (2, 32), device="cuda")
        positions = torch.arange(32, device="cuda").expand(2, -1)
        loss = model(tokens, positions, None, labels=tokens).mean()
        loss.backward()
        assert math.isfinite(loss.item())
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    finally:
        destroy_distributed()


def test_bf16_training_runs_and_tracks_fp32(gpu_args, fp32_losses, tmp_path):
    bf16 = run_losses([*gpu_args, "--bf16"], tmp_path, "bf16")
    assert bf16 == pytest.approx(fp32_losses, rel=2e-2)


def test_distributed_optimizer_matches_the_plain_one(gpu_args, fp32_losses, tmp_path):
    sharded = run_losses([*gpu_args, "--use-distributed-optimizer"], tmp_path, "distributed")
    assert sharded == pytest.approx(fp32_losses, rel=1e-5)


def test_overlapped_grad_reduce_and_param_gather_match_the_plain_optimizer(gpu_args, fp32_losses, tmp_path):
    """--overlap-grad-reduce / --overlap-param-gather: the same updates, communicated during compute
    (the parameters are gathered before validation and saves, which this run also does)."""
    overlapped = run_losses([*gpu_args, "--use-distributed-optimizer", "--overlap-grad-reduce",
                             "--overlap-param-gather"], tmp_path, "overlap")
    assert overlapped == pytest.approx(fp32_losses, rel=1e-5)


@pytest.mark.parametrize("granularity", ["full", "selective"])
def test_activation_recompute_leaves_the_losses(gpu_args, fp32_losses, tmp_path, granularity):
    recomputed = run_losses([*gpu_args, "--recompute-granularity", granularity], tmp_path, granularity)
    assert recomputed == pytest.approx(fp32_losses, rel=1e-5)


def test_lst_bf16_on_the_speech_text_blend(blend_args, tmp_path):
    """LST's own modules (patch encoder/decoder, cross-attention) in bf16 with the distributed optimizer."""
    args = [*blend_args, "--model", "lst", "--bf16", "--use-distributed-optimizer"]
    run_losses(args, tmp_path, "lst-bf16")


# ------------------------------------------------------------------------------ several GPUs
@two_gpus
def test_pipeline_schedule_matches_one_stage(gpu_args, fp32_losses, tmp_path):
    two = run_losses([*gpu_args, "--pipeline-model-parallel-size", "2"], tmp_path, "pp2", nproc=2)
    assert two == pytest.approx(fp32_losses, rel=1e-4)


@two_gpus
def test_sequence_parallel_with_tensor_parallel(gpu_args, tmp_path):
    tp = run_losses([*gpu_args, "--tensor-model-parallel-size", "2"], tmp_path, "tp2", nproc=2)
    sp = run_losses([*gpu_args, "--tensor-model-parallel-size", "2", "--sequence-parallel"], tmp_path, "sp", nproc=2)
    assert sp == pytest.approx(tp, rel=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
def test_deepspeed_zero2_bf16_on_gpu(gpu_args, tmp_path, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    run_losses([*gpu_args, "--engine", "deepspeed", "--deepspeed-config", "examples/deepspeed/zero2.json", "--bf16"],
               tmp_path, "deepspeed")
