"""Multiple-choice scoring by likelihood: one joint sequence per (item, ending, direction).

Sequence layout (the same as an interleaved training stream, docs/method.md §2 and data/interleave.py)::

    BOS  m(prompt)  prompt tokens  [m(ending) if its modality differs]  ending tokens

where ``m`` is ``<t>`` for text and ``<s>`` for speech. A same-modality ending simply continues
the prompt (S->S, T->T); a cross-modal ending (S->T, T->S) gets the switch marker the model saw at
every modality change in training. The marker is identical for all endings of an item, so it does
not change the ending scores; it is part of the whole-sequence score.

Three scores per ending (docs/method.md §6 asks for all three, the paper does not say which it used):

* ``sum``:      summed log-prob of the ending tokens (lm-eval style); higher is better.
* ``mean``:     the same divided by the number of ending tokens; higher is better.
* ``seq_nll``:  mean negative log-prob over every predicted token of the whole sequence (slamkit
                style, prompt included); lower is better.

The chosen ending is the best score; on an exact tie the first ending wins (ties are vanishingly
rare with real models). Accuracy comes with a 95% Wilson score interval, which unlike the normal
approximation stays inside [0, 1] and behaves at small n and at accuracies near 0 or 1.

The model is reached only through :class:`TokenScorer`, so the arithmetic here is tested against
hand-computed log-probs of a tiny table model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol, Sequence

import numpy as np

from megatron_lst.evaluation.items import SPEECH, TEXT, Item, Part
from megatron_lst.tokenizer import JointTokenizer

SCORES = ("sum", "mean", "seq_nll")
LOWER_IS_BETTER = {"sum": False, "mean": False, "seq_nll": True}
WILSON_Z = 1.959963984540054


@dataclass(frozen=True)
class Direction:
    """Prompt modality -> ending modality, e.g. S->T: speech prompt, text endings."""

    name: str
    prompt: str
    ending: str

    @property
    def label(self) -> str:
        letter = {SPEECH: "S", TEXT: "T"}
        return f"{letter[self.prompt]}->{letter[self.ending]}"


DIRECTIONS = {
    "ss": Direction("ss", SPEECH, SPEECH),
    "tt": Direction("tt", TEXT, TEXT),
    "st": Direction("st", SPEECH, TEXT),
    "ts": Direction("ts", TEXT, SPEECH),
}


class EndingTooLong(ValueError):
    """An ending alone does not fit the length the model is evaluated at."""


class TokenScorer(Protocol):
    def token_logprobs(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        """For each sequence of joint ids, log p(token t | tokens < t) for t = 1 .. len - 1.

        A scorer that patches aligned also takes ``alignments=[(segment_ids, is_silence), ...]``,
        one pair of per-token arrays per sequence (:class:`ScoringSequence`); it is passed only
        when the builder made them (``SequenceBuilder(word_times=True)``)."""


@dataclass(frozen=True)
class ScoringSequence:
    """One candidate as the model sees it: ``tokens[ending_start:]`` are the ending's tokens.

    With word times, ``segment_ids`` / ``is_silence`` are its per-token metadata in the patching
    kernel's schema (patching/strategies.py): every unit carries the id of its word or silence
    segment, unique in the sequence; text tokens, markers and BOS carry -1 (single-token patches).
    """

    tokens: np.ndarray
    ending_start: int
    segment_ids: Optional[np.ndarray] = None
    is_silence: Optional[np.ndarray] = None

    @property
    def alignment(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        return None if self.segment_ids is None else (self.segment_ids, self.is_silence)


@dataclass(frozen=True)
class PartTokens:
    """A part's joint ids, with per-token segment metadata when the builder keeps word times."""

    tokens: np.ndarray
    segment_ids: Optional[np.ndarray] = None
    is_silence: Optional[np.ndarray] = None


class SequenceBuilder:
    """Turns parts of an item into joint-vocabulary ids and lays out the scoring sequence.

    ``word_times=True`` (aligned scoring) also lays out each sequence's segment metadata from its
    speech parts' ``segments``, the way the interleaver lays out a training stream's
    (data/interleave.py ``StreamBuilder``), so the training patching code applies unchanged.
    """

    def __init__(self, tokenizer: JointTokenizer, max_length: Optional[int] = None, word_times: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.word_times = word_times

    def part_tokens(self, part: Part, modality: str) -> np.ndarray:
        if modality == TEXT:
            return np.asarray(self.tokenizer.encode_text(part.text), dtype=np.int64)
        return self.tokenizer.encode_units(part.units).astype(np.int64)

    def encode_part(self, part: Part, modality: str, name: str = "part") -> PartTokens:
        """The part's tokens and, with word times, its segment ids (speech: the part's segments
        numbered from 0; text: -1) and silence flags."""
        tokens = self.part_tokens(part, modality)
        if not self.word_times:
            return PartTokens(tokens)
        if modality == TEXT or len(tokens) == 0:  # text, or an empty speech prompt: nothing to align
            return PartTokens(tokens, np.full(len(tokens), -1, np.int32), np.zeros(len(tokens), bool))
        if not part.has_word_times:
            raise ValueError(f"{name} has units but no word times ('segments'), which aligned scoring needs")
        segment_ids, is_silence = part.segment_metadata()
        if len(segment_ids) != len(tokens):  # a tokenizer that does not map one unit to one token (unit BPE)
            raise ValueError(f"{name}: {len(part.units)} units became {len(tokens)} tokens, so its word times "
                             "do not apply; aligned scoring needs one token per unit")
        return PartTokens(tokens, segment_ids, is_silence)

    def marker(self, modality: str) -> int:
        return self.tokenizer.text_marker_id if modality == TEXT else self.tokenizer.speech_marker_id

    def build(self, prompt: np.ndarray | PartTokens, ending: np.ndarray | PartTokens,
              direction: Direction) -> ScoringSequence:
        """Lay out one sequence; a too-long prompt loses its oldest tokens (BOS and marker stay),
        because the end of the story is what the ending must follow. A cut through a word keeps
        its remaining units as a shorter segment."""
        prompt = prompt if isinstance(prompt, PartTokens) else PartTokens(np.asarray(prompt))
        ending = ending if isinstance(ending, PartTokens) else PartTokens(np.asarray(ending))
        if len(ending.tokens) == 0:
            raise ValueError("an ending has no tokens")
        head = [self.tokenizer.bos_id, self.marker(direction.prompt)]
        switch = [self.marker(direction.ending)] if direction.ending != direction.prompt else []
        keep = len(prompt.tokens)
        if self.max_length is not None:
            room = self.max_length - len(head) - len(switch) - len(ending.tokens)
            if room < 1:
                raise EndingTooLong(f"an ending of {len(ending.tokens)} tokens does not fit in {self.max_length} "
                                    f"tokens with BOS and markers")
            keep = min(keep, room)
        start = len(prompt.tokens) - keep
        tokens = np.concatenate([np.asarray(head, np.int64), prompt.tokens[start:],
                                 np.asarray(switch, np.int64), ending.tokens])
        ending_start = len(tokens) - len(ending.tokens)
        if prompt.segment_ids is None or ending.segment_ids is None:
            return ScoringSequence(tokens, ending_start)
        # the ending's segments follow the prompt's: ids stay unique and non-decreasing along the row
        offset = int(prompt.segment_ids.max(initial=-1)) + 1
        ending_ids = np.where(ending.segment_ids >= 0, ending.segment_ids + offset, -1)
        none = np.full(len(head), -1, np.int32), np.full(len(switch), -1, np.int32)
        segment_ids = np.concatenate([none[0], prompt.segment_ids[start:], none[1], ending_ids]).astype(np.int32)
        is_silence = np.concatenate([np.zeros(len(head), bool), prompt.is_silence[start:],
                                     np.zeros(len(switch), bool), ending.is_silence]).astype(bool)
        return ScoringSequence(tokens, ending_start, segment_ids, is_silence)

    def item_sequences(self, item: Item, direction: Direction) -> list[ScoringSequence]:
        prompt = self.encode_part(item.prompt, direction.prompt, f"item {item.id}: prompt")
        return [self.build(prompt, self.encode_part(ending, direction.ending, f"item {item.id}: endings[{index}]"),
                           direction)
                for index, ending in enumerate(item.endings)]


def ending_scores(sequence: ScoringSequence, logprobs: np.ndarray) -> dict[str, float]:
    """The three scores of one candidate from its per-position log-probs (index t-1 = token t)."""
    if len(logprobs) != len(sequence.tokens) - 1:
        raise ValueError(f"scorer returned {len(logprobs)} log-probs for {len(sequence.tokens)} tokens")
    ending = logprobs[sequence.ending_start - 1:]
    return {"sum": float(ending.sum()), "mean": float(ending.mean()), "seq_nll": float(-logprobs.mean())}


def choose(scores: Sequence[float], lower_is_better: bool) -> int:
    """Index of the best score; the first on a tie."""
    values = np.asarray(scores, dtype=np.float64)
    return int(np.argmin(values) if lower_is_better else np.argmax(values))


def wilson_interval(correct: int, total: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% at the default z)."""
    if total == 0:
        return (0.0, 1.0)
    proportion = correct / total
    denominator = 1 + z * z / total
    centre = (proportion + z * z / (2 * total)) / denominator
    half = z * math.sqrt(proportion * (1 - proportion) / total + z * z / (4 * total * total)) / denominator
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)

    def to_dict(self) -> dict:
        low, high = self.interval
        return {"accuracy": self.value, "ci95_low": low, "ci95_high": high,
                "correct": self.correct, "total": self.total}


@dataclass(frozen=True)
class DirectionResult:
    direction: Direction
    accuracy: dict[str, Accuracy]
    per_item: list[dict]

    def to_dict(self) -> dict:
        return {"direction": self.direction.label,
                "accuracy": {name: acc.to_dict() for name, acc in self.accuracy.items()},
                "items": self.per_item}


def _batches(sequences: list[ScoringSequence], batch_size: int) -> Iterator[list[ScoringSequence]]:
    for start in range(0, len(sequences), batch_size):
        yield sequences[start:start + batch_size]


def score_direction(items: Sequence[Item], direction: Direction, builder: SequenceBuilder,
                    scorer: TokenScorer, batch_size: int = 16) -> DirectionResult:
    """Score every ending of every item in one direction; the items must all carry its fields."""
    missing = [item.id for item in items if not item.has(direction.prompt, direction.ending)]
    if missing:
        raise ValueError(f"{direction.label}: {len(missing)} items lack its fields, e.g. {missing[0]}")
    per_item_sequences = [builder.item_sequences(item, direction) for item in items]
    flat = [sequence for sequences in per_item_sequences for sequence in sequences]
    logprobs: list[np.ndarray] = []
    for batch in _batches(flat, batch_size):
        tokens = [sequence.tokens for sequence in batch]
        if builder.word_times:
            logprobs.extend(scorer.token_logprobs(tokens, alignments=[sequence.alignment for sequence in batch]))
        else:
            logprobs.extend(scorer.token_logprobs(tokens))
    flat_scores = [ending_scores(sequence, lp) for sequence, lp in zip(flat, logprobs, strict=True)]

    correct = dict.fromkeys(SCORES, 0)
    per_item = []
    position = 0
    for item, sequences in zip(items, per_item_sequences):
        scores = flat_scores[position:position + len(sequences)]
        position += len(sequences)
        predictions = {name: choose([s[name] for s in scores], LOWER_IS_BETTER[name]) for name in SCORES}
        for name, predicted in predictions.items():
            correct[name] += int(predicted == item.label)
        per_item.append({"id": item.id, "label": item.label, "predicted": predictions,
                         "scores": {name: [s[name] for s in scores] for name in SCORES}})
    accuracy = {name: Accuracy(correct[name], len(items)) for name in SCORES}
    return DirectionResult(direction, accuracy, per_item)


def skip_reason(items: Sequence[Item], direction: Direction) -> Optional[str]:
    """Why a direction cannot be evaluated on these items, or None when it can."""
    if not items:
        return "the benchmark has no items"
    field = {TEXT: "text", SPEECH: "units"}
    lacking_prompts = sum(not item.prompt.has(direction.prompt) for item in items)
    lacking_endings = sum(not all(e.has(direction.ending) for e in item.endings) for item in items)
    for role, modality, lacking in (("prompts", direction.prompt, lacking_prompts),
                                    ("endings", direction.ending, lacking_endings)):
        if lacking == len(items):
            return f"no {field[modality]} in the benchmark's {role}"
        if lacking:
            return f"{lacking} of {len(items)} items have no {field[modality]} in their {role}"
    return None
