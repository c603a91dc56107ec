"""Multiple-choice scoring by likelihood: one joint sequence per (item, ending, direction).

Sequence layout (the same as an interleaved training stream, docs/method.md §2 and data/interleave.py)::

    BOS  m(prompt)  prompt tokens  [m(ending) if its modality differs]  ending tokens

where ``m`` is ``<t>`` for text and ``<s>`` for speech. A same-modality ending simply continues
the prompt (S->S, T->T); a cross-modal ending (S->T, T->S) gets the switch marker the model saw at
every modality change in training. The marker is identical for all endings of an item, so it does
not change the ending scores; it is part of the whole-sequence score.

Three scores per ending (docs/method.md §6 asks for all three, the paper does not say which it used):

* ``sum``:      summed log-prob of the ending tokens (lm-eval style); higher is better.
* ``mean``:     the same divided by the ending's length: its speech units, or its text tokens;
                higher is better. Units, not tokens, for speech: a unit-BPE model reads a speech
                ending as fewer, longer pieces, and a non-word's rarer unit runs split into more
                and shorter pieces, each easier to predict, so a per-piece mean favours whichever
                ending splits worse. Per unit, every model's mean measures the same quantity (for
                the others one unit is one token).
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
from typing import Callable, Optional, Protocol, Sequence

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
    # what ``mean`` divides by: the ending's speech units or text tokens (None: its tokens)
    ending_length: Optional[int] = None

    @property
    def mean_denominator(self) -> int:
        return len(self.tokens) - self.ending_start if self.ending_length is None else self.ending_length

    @property
    def alignment(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        return None if self.segment_ids is None else (self.segment_ids, self.is_silence)


@dataclass(frozen=True)
class PartTokens:
    """A part's joint ids, with per-token segment metadata when the builder keeps word times;
    ``length`` is its speech units (a unit-BPE tokenizer spells several with one token) or, for
    text and when None, its tokens."""

    tokens: np.ndarray
    segment_ids: Optional[np.ndarray] = None
    is_silence: Optional[np.ndarray] = None
    length: Optional[int] = None


class SequenceBuilder:
    """Turns parts of an item into joint-vocabulary ids and lays out the scoring sequence.

    ``word_times=True`` (aligned scoring) also lays out each sequence's segment metadata from its
    speech parts' ``segments``, the way the interleaver lays out a training stream's
    (data/interleave.py ``StreamBuilder``), so the training patching code applies unchanged.
    """

    def __init__(self, tokenizer: JointTokenizer, max_length: Optional[int] = None, word_times: bool = False,
                 measure: Optional[Callable[[ScoringSequence], int]] = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.word_times = word_times
        # how long a sequence is for the model: None counts tokens; an LST counts patches
        # (prompt_cache.patch_counter), as its --seq-length does
        self.measure = measure
        self.length_unit = "tokens" if measure is None else "patches"

    def part_tokens(self, part: Part, modality: str) -> np.ndarray:
        if modality == TEXT:
            return np.asarray(self.tokenizer.encode_text(part.text), dtype=np.int64)
        return self.tokenizer.encode_units(part.units).astype(np.int64)

    def encode_part(self, part: Part, modality: str, name: str = "part") -> PartTokens:
        """The part's tokens and, with word times, its segment ids (speech: the part's segments
        numbered from 0; text: -1) and silence flags."""
        tokens = self.part_tokens(part, modality)
        length = len(part.units) if modality != TEXT else None
        if not self.word_times:
            return PartTokens(tokens, length=length)
        if modality == TEXT or len(tokens) == 0:  # text, or an empty speech prompt: nothing to align
            return PartTokens(tokens, np.full(len(tokens), -1, np.int32), np.zeros(len(tokens), bool), length)
        if not part.has_word_times:
            raise ValueError(f"{name} has units but no word times ('segments'), which aligned scoring needs")
        segment_ids, is_silence = part.segment_metadata()
        if len(segment_ids) != len(tokens):  # a tokenizer that does not map one unit to one token (unit BPE)
            raise ValueError(f"{name}: {len(part.units)} units became {len(tokens)} tokens, so its word times "
                             "do not apply; aligned scoring needs one token per unit")
        return PartTokens(tokens, segment_ids, is_silence, length)

    def marker(self, modality: str) -> int:
        return self.tokenizer.text_marker_id if modality == TEXT else self.tokenizer.speech_marker_id

    def build(self, prompt: np.ndarray | PartTokens, ending: np.ndarray | PartTokens,
              direction: Direction) -> ScoringSequence:
        """Lay out one sequence; a too-long prompt loses its oldest tokens (BOS and marker stay),
        because the end of the story is what the ending must follow. A cut through a word keeps
        its remaining units as a shorter segment. Length is counted in tokens, or with ``measure``
        (``SequenceBuilder(measure=...)``: an LST's patches) the longest prompt tail that fits."""
        prompt = prompt if isinstance(prompt, PartTokens) else PartTokens(np.asarray(prompt))
        ending = ending if isinstance(ending, PartTokens) else PartTokens(np.asarray(ending))
        if len(ending.tokens) == 0:
            raise ValueError("an ending has no tokens")
        keep = len(prompt.tokens)
        if self.max_length is None:
            return self._layout(prompt, ending, direction, keep)
        if self.measure is None:
            extra = 3 if direction.ending != direction.prompt else 2  # BOS, m(P) [, m(E)]
            room = self.max_length - extra - len(ending.tokens)
            if room < 1:
                raise EndingTooLong(f"an ending of {len(ending.tokens)} tokens does not fit in {self.max_length} "
                                    f"tokens with BOS and markers")
            return self._layout(prompt, ending, direction, min(keep, room))
        whole = self._layout(prompt, ending, direction, keep)
        if self.measure(whole) <= self.max_length:
            return whole
        shortest = self._layout(prompt, ending, direction, min(1, keep))
        if self.measure(shortest) > self.max_length:
            raise EndingTooLong(f"an ending of {len(ending.tokens)} tokens is {self.measure(shortest)} "
                                f"{self.length_unit} with BOS and markers, more than {self.max_length}")
        low, high = min(1, keep), keep  # fits(low), not fits(high): the patch count grows with the kept tail
        while high - low > 1:
            middle = (low + high) // 2
            if self.measure(self._layout(prompt, ending, direction, middle)) <= self.max_length:
                low = middle
            else:
                high = middle
        return self._layout(prompt, ending, direction, low)

    def _layout(self, prompt: PartTokens, ending: PartTokens, direction: Direction, keep: int) -> ScoringSequence:
        """``BOS m(P) prompt[-keep:] [m(E)] ending``, with its segment metadata under word times."""
        head = [self.tokenizer.bos_id, self.marker(direction.prompt)]
        switch = [self.marker(direction.ending)] if direction.ending != direction.prompt else []
        start = len(prompt.tokens) - keep
        tokens = np.concatenate([np.asarray(head, np.int64), prompt.tokens[start:],
                                 np.asarray(switch, np.int64), ending.tokens])
        ending_start = len(tokens) - len(ending.tokens)
        if prompt.segment_ids is None or ending.segment_ids is None:
            return ScoringSequence(tokens, ending_start, ending_length=ending.length)
        # the ending's segments follow the prompt's: ids stay unique and non-decreasing along the row
        offset = int(prompt.segment_ids.max(initial=-1)) + 1
        ending_ids = np.where(ending.segment_ids >= 0, ending.segment_ids + offset, -1)
        none = np.full(len(head), -1, np.int32), np.full(len(switch), -1, np.int32)
        segment_ids = np.concatenate([none[0], prompt.segment_ids[start:], none[1], ending_ids]).astype(np.int32)
        is_silence = np.concatenate([np.zeros(len(head), bool), prompt.is_silence[start:],
                                     np.zeros(len(switch), bool), ending.is_silence]).astype(bool)
        return ScoringSequence(tokens, ending_start, segment_ids, is_silence, ending.length)

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
    return {"sum": float(ending.sum()), "mean": float(ending.sum()) / sequence.mean_denominator,
            "seq_nll": float(-logprobs.mean())}


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
    # ids of the items left out because an ending does not fit the model's length, one by one
    skipped: tuple[str, ...] = ()

    @property
    def scored(self) -> int:
        return len(self.per_item)

    def to_dict(self) -> dict:
        return {"direction": self.direction.label, "scored": self.scored, "skipped": len(self.skipped),
                "skipped_items": list(self.skipped),
                "accuracy": {name: acc.to_dict() for name, acc in self.accuracy.items()},
                "items": self.per_item}


class ItemScorer(Protocol):
    def item_logprobs(self, sequences: list[np.ndarray], alignments=None) -> list[np.ndarray]:
        """``TokenScorer.token_logprobs`` for the endings of one item (prompt_cache.PromptCachedScorer)."""


def _item_record(item: Item, sequences: list[ScoringSequence], logprobs: list[np.ndarray]) -> dict:
    scores = [ending_scores(sequence, lp) for sequence, lp in zip(sequences, logprobs, strict=True)]
    predictions = {name: choose([s[name] for s in scores], LOWER_IS_BETTER[name]) for name in SCORES}
    return {"id": item.id, "label": item.label, "predicted": predictions,
            "scores": {name: [s[name] for s in scores] for name in SCORES}}


def _score_flat(items: list[Item], per_item: list[list[ScoringSequence]], scorer: TokenScorer, batch_size: int,
                word_times: bool, progress) -> list[dict]:
    """Whole sequences in batches of ``batch_size`` across items."""
    flat = [sequence for sequences in per_item for sequence in sequences]
    ends = np.cumsum([len(sequences) for sequences in per_item])
    logprobs: list[np.ndarray] = []
    for start in range(0, len(flat), batch_size):
        batch = flat[start:start + batch_size]
        tokens = [sequence.tokens for sequence in batch]
        if word_times:
            logprobs.extend(scorer.token_logprobs(tokens, alignments=[sequence.alignment for sequence in batch]))
        else:
            logprobs.extend(scorer.token_logprobs(tokens))
        progress.update(int(np.searchsorted(ends, len(logprobs), side="right")) - progress.n)
    records, position = [], 0
    for item, sequences in zip(items, per_item):
        records.append(_item_record(item, sequences, logprobs[position:position + len(sequences)]))
        position += len(sequences)
    return records


def _score_cached(items: list[Item], per_item: list[list[ScoringSequence]], scorer: ItemScorer,
                  word_times: bool, progress) -> list[dict]:
    """Item by item: the shared prompt read once, the endings batched after it."""
    records = []
    for item, sequences in zip(items, per_item):
        tokens = [sequence.tokens for sequence in sequences]
        if word_times:
            logprobs = scorer.item_logprobs(tokens, alignments=[sequence.alignment for sequence in sequences])
        else:
            logprobs = scorer.item_logprobs(tokens)
        records.append(_item_record(item, sequences, logprobs))
        progress.update(1)
    return records


def score_direction(items: Sequence[Item], direction: Direction, builder: SequenceBuilder,
                    scorer: TokenScorer | ItemScorer, batch_size: int = 16, progress: bool = False) -> DirectionResult:
    """Score every ending of every item in one direction; the items must all carry its fields.

    An item with an ending that does not fit the builder's length is skipped and listed (never
    cut: a cut ending is a different ending); accuracy counts the scored items. A scorer with
    ``item_logprobs`` reads each item's shared prompt once (prompt_cache.py); one with only
    ``token_logprobs`` scores whole sequences in batches. Under torchrun each rank scores every
    world-size-th item and all ranks get the gathered results in item order (parallel.py), the
    same as one process. ``progress``: a tqdm bar on stderr (rank 0 only)."""
    from megatron_lst.evaluation.parallel import gather_in_order, rank_and_world, progress_bar

    missing = [item.id for item in items if not item.has(direction.prompt, direction.ending)]
    if missing:
        raise ValueError(f"{direction.label}: {len(missing)} items lack its fields, e.g. {missing[0]}")
    rank, world = rank_and_world()
    mine: list[tuple[int, Item]] = list(enumerate(items))[rank::world]
    fitting, sequences, results = [], [], {}
    for index, item in mine:
        try:
            sequences.append(builder.item_sequences(item, direction))
        except EndingTooLong:
            results[index] = None  # skipped, counted
            continue
        fitting.append((index, item))
    with progress_bar(len(mine), direction.label, enabled=progress and rank == 0, world=world) as bar:
        bar.update(len(mine) - len(fitting))
        mine_items = [item for _, item in fitting]
        if callable(getattr(scorer, "item_logprobs", None)):
            records = _score_cached(mine_items, sequences, scorer, builder.word_times, bar)
        else:
            records = _score_flat(mine_items, sequences, scorer, batch_size, builder.word_times, bar)
    results.update({index: record for (index, _), record in zip(fitting, records)})
    ordered = gather_in_order(results, len(items))
    per_item = [record for record in ordered if record is not None]
    skipped = tuple(item.id for item, record in zip(items, ordered) if record is None)
    correct = {name: sum(int(r["predicted"][name] == r["label"]) for r in per_item) for name in SCORES}
    accuracy = {name: Accuracy(correct[name], len(per_item)) for name in SCORES}
    return DirectionResult(direction, accuracy, per_item, skipped)


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
