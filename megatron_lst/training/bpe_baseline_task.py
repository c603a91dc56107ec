"""The BPE SpeechLLM baseline (docs/method.md §2) as a ``TrainingTask``.

It is ``BaselineTask`` (megatron-core GPTModel, the same packed interleaved samples) with two
differences: the joint vocabulary's speech slots hold unit BPE pieces (``UnitBPETokenizer``), and the
speech-text datasets are read through the BPE (``data/bpe_documents.py``), so a speech span is a
run of piece ids. The BPE travels with the checkpoint: its identity and the data's codebook are in
the saved ``vocab_layout`` and are checked on resume (``check_checkpoint``) and at evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_lst.data.input_checks import parse_blend
from megatron_lst.data.speech_documents import is_speech_text_dataset
from megatron_lst.data.speech_layout import metadata_path
from megatron_lst.training.arguments import Config
from megatron_lst.training.baseline_task import BaselineTask
from megatron_lst.training.run_config import decode_saved
from megatron_lst.training.task import TaskData
from megatron_lst.unit_bpe_tokenizer import UnitBPETokenizer, check_saved_layout


def load_bpe_tokenizer(config: Config) -> UnitBPETokenizer:
    """Text model + unit BPE; the BPE must have been trained on the run's ``--num-units`` codebook."""
    if not config.data.tokenizer_model:
        raise ValueError("--tokenizer-model is required (a SentencePiece .model or .tiktoken file)")
    if not config.data.unit_bpe:
        raise ValueError("--model bpe-baseline needs --unit-bpe MODEL (tools/train_unit_bpe.py)")
    tokenizer = UnitBPETokenizer.from_files(config.data.tokenizer_model, config.data.unit_bpe, config.data.num_units,
                                           config.data.tokenizer_type)
    trained_on = tokenizer.unit_bpe.num_units
    if trained_on is not None and trained_on != config.data.num_units:
        raise ValueError(f"--num-units {config.data.num_units} but the unit BPE {config.data.unit_bpe} was trained on "
                         f"num_units = {trained_on} (its .json): a BPE encodes only the codebook it was trained on")
    return tokenizer


class BPEBaselineTask(BaselineTask):
    """GPTModel over text ids, markers and unit BPE pieces."""

    name = "bpe-baseline"

    def __init__(self, config: Config, tokenizer: UnitBPETokenizer | None = None, pack_sequences=None):
        super().__init__(config, tokenizer or load_bpe_tokenizer(config), pack_sequences)

    def speech_dataset_options(self) -> dict:
        return {"unit_bpe": self.config.data.unit_bpe}

    def build_datasets(self, config: Config, train_samples: int, valid_samples: int) -> TaskData:
        prefixes, _ = parse_blend(config.data.data_path)
        for prefix in filter(is_speech_text_dataset, prefixes):
            check_data_codebook(prefix, config.data.num_units)
        return super().build_datasets(config, train_samples, valid_samples)

    def check_checkpoint(self, common: dict, source: str) -> None:
        """Called before a checkpoint's weights are loaded: same BPE, codebook and layout, or a clear error."""
        if "vocab_layout" not in common:
            raise ValueError(f"{source}: the checkpoint records no vocab_layout, so its unit BPE cannot be checked")
        check_saved_layout(decode_saved(common["vocab_layout"], "vocab_layout"), self.tokenizer, source)


def check_data_codebook(prefix: str, num_units: int) -> None:
    """The speech-text corpus must use the run's ``--num-units`` codebook (recorded in the checkpoint)."""
    path = Path(metadata_path(prefix))
    data_units = json.loads(path.read_text(encoding="utf-8")).get("num_units")
    if data_units != num_units:
        raise ValueError(f"{path}: num_units = {data_units} but the run has --num-units {num_units}")
