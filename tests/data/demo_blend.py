"""The demo's blend over synthetic corpora, read as the training loop reads LST batches.

``--data-path 0.33 SPEECH 0.67 TEXT``, ``--seq-length 256``, micro-batch 4, global batch 8 (the
demo's settings) over the corpora of ``bench/bench_dataloader.py``, read through
``build_data_iterator`` with the LST collate, which patches every sample keyed by its global index
and the step that trains it. Shared by the bucketing tests and the TP batch-broadcast tests.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache, partial
from pathlib import Path
from typing import Iterator, Optional

from megatron_lst.data.blending import blend_from_data_path, build_lst_datasets
from megatron_lst.data.datasets import LSTDatasetConfig
from megatron_lst.data.interleave import InterleaveConfig
from megatron_lst.patching import PatchingConfig
from megatron_lst.tokenizer import JointTokenizer
from megatron_lst.training.arguments import DEFAULT_BUCKET_WINDOW
from megatron_lst.training.lst_task import collate_lst_samples
from megatron_lst.training.sampler import SamplingOptions, build_data_iterator

ROOT = Path(__file__).resolve().parents[2]
SEQ_LENGTH, MICRO, GLOBAL = 256, 4, 8
TRAIN_STEPS = 60


def build_demo_like_corpora(folder: Path, documents: int = 600) -> tuple[str, str, str]:
    """(tokenizer model, speech prefix, text prefix) in ``folder``, built once."""
    model, speech, text = str(folder / "spm.model"), str(folder / "sp_speech_document"), str(folder / "tx_text_document")
    if not (Path(model).is_file() and Path(speech + ".idx").is_file() and Path(text + ".idx").is_file()):
        spec = importlib.util.spec_from_file_location("bench_dataloader_corpora", ROOT / "bench" / "bench_dataloader.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model, speech, text = module.build_corpora(folder, documents)
    return model, speech, text


@lru_cache(maxsize=4)
def demo_like_dataset(folder: str):
    """(train dataset of TRAIN_STEPS global batches, tokenizer), as LSTTask.build_datasets makes them."""
    model, speech, text = build_demo_like_corpora(Path(folder))
    tokenizer = JointTokenizer.from_file(model)
    positions = SEQ_LENGTH + 1
    config = LSTDatasetConfig(random_seed=1, sequence_length=positions, split="1,0,0",
                              blend=blend_from_data_path(["0.33", speech, "0.67", text]), vocab=tokenizer.vocab,
                              interleave=InterleaveConfig(seed=1), patch_size=4, max_tokens=4 * positions)
    train, _, _ = build_lst_datasets(config, [TRAIN_STEPS * GLOBAL, 0, 0])
    return train, tokenizer


def demo_like_reader(folder: Path, steps: int = TRAIN_STEPS, window: int = DEFAULT_BUCKET_WINDOW, micro: int = MICRO,
                     rank: int = 0, dp: int = 1, consumed: int = 0, workers: int = 0,
                     patching: Optional[PatchingConfig] = None) -> Iterator[dict]:
    """The first ``steps`` steps of this rank's micro-batches, as the training loop reads them."""
    train, tokenizer = demo_like_dataset(str(folder))
    patching = patching or PatchingConfig(strategy="curriculum", patch_size=4, tau1=2, tau2=8, seed=1)
    collate = partial(collate_lst_samples, bos_id=tokenizer.bos_id, pad_id=tokenizer.pad_id, patching=patching,
                      vocab=tokenizer.vocab)
    iterator = build_data_iterator(train, consumed, micro, rank, dp, GLOBAL, num_workers=workers, collate_fn=collate,
                                   sampling=SamplingOptions(attach_keys=True, bucket_window=window, seed=1))
    per_step = GLOBAL // (micro * dp)
    return (next(iterator) for _ in range(per_step * (steps - consumed // GLOBAL)))
