"""Prompts in the streams' own formats (data/interleave.py), and the tasks built on them.

- continue text:   ``BOS <t> text``            -> more text
- continue speech: ``BOS <s> units``           -> more units
- TTS:             ``BOS <t> transcript <s>``  -> units   (the ``tts`` data mode's stream)
- ASR:             ``BOS <s> units <t>``       -> text    (the ``asr`` data mode's stream)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from megatron_lst.inference.generate import SPEECH, TEXT, Generation, GenerationConfig
from megatron_lst.tokenizer import JointTokenizer


def text_prompt(tokenizer: JointTokenizer, text: str) -> list[int]:
    return [tokenizer.bos_id, tokenizer.text_marker_id, *tokenizer.encode_text(text)]


def speech_prompt(tokenizer: JointTokenizer, units: Sequence[int]) -> list[int]:
    return [tokenizer.bos_id, tokenizer.speech_marker_id, *tokenizer.encode_units(units).tolist()]


def tts_prompt(tokenizer: JointTokenizer, text: str) -> list[int]:
    return text_prompt(tokenizer, text) + [tokenizer.speech_marker_id]


def asr_prompt(tokenizer: JointTokenizer, units: Sequence[int]) -> list[int]:
    return speech_prompt(tokenizer, units) + [tokenizer.text_marker_id]


def generated_units(tokenizer: JointTokenizer, tokens: Sequence[int]) -> np.ndarray:
    """The unit indices (0-based) among generated ids."""
    ids = np.asarray(tokens, dtype=np.int64)
    return tokenizer.decode_units(ids[tokenizer.vocab.is_unit(ids)])


def generated_text(tokenizer: JointTokenizer, tokens: Sequence[int]) -> str:
    ids = [int(t) for t in tokens if bool(tokenizer.vocab.is_text(t))]
    return tokenizer.text_model.decode(ids) if ids else ""


def transcribe(generator, unit_lists: Sequence[Sequence[int]], max_tokens: int = 64,
               batch_size: int = 8) -> tuple[list[str], list[Generation]]:
    """ASR: the text the model writes after ``<s> units <t>`` (greedy), per utterance."""
    tokenizer = generator.tokenizer
    config = GenerationConfig(max_new_tokens=max_tokens, modality=TEXT)
    texts, runs = [], []
    for start in range(0, len(unit_lists), batch_size):
        prompts = [asr_prompt(tokenizer, units) for units in unit_lists[start:start + batch_size]]
        result = generator.generate(prompts, config)
        texts += [generated_text(tokenizer, row) for row in result.tokens]
        runs.append(result)
    return texts, runs


def synthesize(generator, texts: Sequence[str], max_seconds: float = 20.0,
               batch_size: int = 8) -> tuple[list[np.ndarray], list[Generation]]:
    """TTS: the units the model writes after ``<t> text <s>`` (greedy), per sentence."""
    tokenizer = generator.tokenizer
    config = GenerationConfig(max_seconds=max_seconds, max_new_tokens=int(max_seconds * 25) + 1, modality=SPEECH)
    unit_lists, runs = [], []
    for start in range(0, len(texts), batch_size):
        prompts = [tts_prompt(tokenizer, text) for text in texts[start:start + batch_size]]
        result = generator.generate(prompts, config)
        unit_lists += [generated_units(tokenizer, row) for row in result.tokens]
        runs.append(result)
    return unit_lists, runs
