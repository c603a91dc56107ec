"""Random aligned-speech records for tests and benchmarks (no real audio needed).

Records follow FORMATS.md and deliberately include the awkward cases: words with empty text,
words with zero frames, leading/trailing and long silences, and documents with no words at all.
"""

from __future__ import annotations

import random

WORDS = ("the quick brown fox jumps over a lazy dog and karen sings while bob reads many books "
         "today yesterday speech units silence words").split()


def random_sentence(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def random_aligned_record(rng: random.Random, index: int, max_words: int = 60, num_units: int = 501) -> dict:
    """One jsonl record with word spans in unit frames and random gaps of silence."""
    words = []
    frame = rng.choice([0, 0, rng.randint(1, 40)])
    for _ in range(rng.randint(0, max_words)):
        gap = rng.choice([0, 0, 0, rng.randint(1, 5), rng.randint(50, 400)]) if words else 0
        start = frame + gap
        length = rng.choice([0] + [rng.randint(1, 12)] * 8)
        text = rng.choice(WORDS) if rng.random() > 0.03 else ""
        words.append({"text": text, "start": start, "end": start + length})
        frame = start + length
    frame += rng.choice([0, rng.randint(1, 30)])
    units = [rng.randrange(num_units) for _ in range(frame)]
    return {"id": f"utt{index}", "units": units, "words": words}


def random_aligned_records(count: int, seed: int = 0, max_words: int = 60) -> list[dict]:
    rng = random.Random(seed)
    return [random_aligned_record(rng, index, max_words) for index in range(count)]
