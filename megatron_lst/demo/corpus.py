"""Build the offline demo corpus: documents -> speech -> units -> aligned jsonl, cached by content.

Steps (all deterministic for a given :class:`CorpusConfig`):

1. Documents come from :mod:`text_source`; each is put in the held-out split by a seeded hash of
   its id, so a held-out document never reaches training text or training speech.
2. Speech documents are cut into utterances of at most ``max_sentences_per_utterance`` sentences,
   each spoken by espeak-ng with a voice, rate and pitch drawn from a generator seeded by the
   utterance id; utterances are synthesised in order until ``hours`` of speech exist.
3. A :class:`LogMelUnitExtractor` is fitted on the training utterances (or a saved one reused) and
   every utterance becomes 25 Hz units; word spans come from espeak's own timings.

Output files (``FILES``) land in ``out_dir`` with a ``manifest.json`` whose ``key`` hashes the config,
the raw source texts, this package's code and the espeak-ng version; a second call with the same
key returns at once.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from megatron_lst.demo.alignment import WordSpan, frame_spans
from megatron_lst.demo.espeak import DEFAULT_VOICES, get_espeak, library_fingerprint
from megatron_lst.demo.text_source import SOURCES, Document, iter_documents, source_fingerprint
from megatron_lst.demo.units import FrontEndConfig, LogMelUnitExtractor, log_mel_features
from megatron_lst.demo.units import num_unit_frames

FILES = {
    "speech_train": "speech_train.jsonl",
    "speech_heldout": "speech_heldout.jsonl",
    "speech_info": "speech_info.jsonl",
    "text_train": "text_train.jsonl",
    "text_heldout": "text_heldout.jsonl",
    "heldout_documents": "heldout_documents.jsonl",
    "extractor": "unit_extractor.npz",
}
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that decides the corpus' content (and so its cache key)."""

    hours: float = 3.0
    speech_sources: tuple[str, ...] = ("lee_background", "lee", "wiki")
    text_sources: tuple[str, ...] = SOURCES
    voices: tuple[str, ...] = DEFAULT_VOICES
    min_rate: int = 150
    max_rate: int = 200
    heldout_percent: float = 10.0
    max_sentences_per_utterance: int = 10
    front_end: FrontEndConfig = field(default_factory=FrontEndConfig)
    kmeans_max_frames: int = 200_000
    seed: int = 0


QUICK_CONFIG = CorpusConfig(hours=0.05, speech_sources=("lee_background",),
                            text_sources=("lee_background",))


@dataclass(frozen=True)
class UtterancePlan:
    """One synthesis call: which sentences, which document and split, which voice."""

    id: str
    document_id: str
    split: str
    text: str
    voice: str
    rate: int
    pitch: int


@dataclass
class SpokenUtterance:
    """A synthesised utterance before quantisation (features kept, waveform dropped)."""

    plan: UtterancePlan
    features: np.ndarray
    spans: list[WordSpan]
    duration_s: float


def is_heldout(document: Document, heldout_percent: float, seed: int) -> bool:
    """Stable document-level split keyed by the document's text, so a story that a source repeats
    under two ids (the Lee corpus does) lands on one side only."""
    digest = hashlib.sha256(f"{seed}:{document.text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < heldout_percent * 100


def plan_utterances(documents: list[Document], config: CorpusConfig) -> Iterator[UtterancePlan]:
    """Utterances in document order, each with its own seeded voice, rate and pitch."""
    size = config.max_sentences_per_utterance
    for document in documents:
        split = "heldout" if is_heldout(document, config.heldout_percent, config.seed) \
            else "train"
        for chunk, first in enumerate(range(0, len(document.sentences), size)):
            utterance_id = f"{document.id}-{chunk:03d}"
            rng = np.random.default_rng(
                int.from_bytes(hashlib.sha256(f"{config.seed}:{utterance_id}".encode()).digest()[:8],
                               "big"))
            yield UtterancePlan(
                id=utterance_id, document_id=document.id, split=split,
                text=" ".join(document.sentences[first:first + size]),
                voice=str(rng.choice(config.voices)),
                rate=int(rng.integers(config.min_rate, config.max_rate + 1)),
                pitch=int(rng.integers(35, 66)))


def unique_documents(sources: tuple[str, ...]) -> list[Document]:
    """Documents of ``sources`` with exact repeats (same sentences) dropped, first kept."""
    seen: set[str] = set()
    documents = []
    for document in iter_documents(sources):
        if document.text not in seen:
            seen.add(document.text)
            documents.append(document)
    return documents


def speak(plan: UtterancePlan, front_end: FrontEndConfig) -> SpokenUtterance | None:
    """Synthesise one utterance and keep its features and word spans; ``None`` when espeak's
    events cannot be matched to the words (reported as skipped)."""
    try:
        synthesis = get_espeak().synthesize(plan.text, plan.voice, plan.rate, plan.pitch)
    except RuntimeError:
        return None
    num_frames = num_unit_frames(len(synthesis.waveform), synthesis.sample_rate)
    features = log_mel_features(synthesis.waveform, synthesis.sample_rate, front_end)
    assert len(features) == num_frames, (len(features), num_frames)
    spans = frame_spans(synthesis.words, synthesis.sample_rate, num_frames)
    return SpokenUtterance(plan, features, spans, synthesis.duration_s)


def _speak_with_config(args: tuple[UtterancePlan, FrontEndConfig]) -> SpokenUtterance | None:
    return speak(*args)


def code_fingerprint() -> str:
    """SHA-256 of this package's source files: changing the builder invalidates old corpora."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def corpus_key(config: CorpusConfig) -> str:
    """Content hash of config + source texts + code + espeak-ng version."""
    sources = sorted(set(config.speech_sources) | set(config.text_sources))
    material = json.dumps({"config": asdict(config), "sources": source_fingerprint(sources),
                           "code": code_fingerprint(), "espeak": library_fingerprint()},
                          sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def _write_jsonl(path: Path, rows: Iterator[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")


def _cached_manifest(folder: Path, key: str) -> dict | None:
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    complete = all((folder / name).is_file() for name in FILES.values())
    return manifest if manifest.get("key") == key and complete else None


def synthesise_until(plans: list[UtterancePlan], config: CorpusConfig, workers: int,
                     progress: bool = True) -> tuple[list[SpokenUtterance], int]:
    """Speak utterances in plan order until ``config.hours`` are reached, ``heldout_percent`` of
    them from held-out documents; returns them and the number skipped. Which utterances are kept
    does not depend on ``workers``."""
    from tqdm import tqdm

    target_s = config.hours * 3600
    budget_s = {"heldout": target_s * config.heldout_percent / 100}
    budget_s["train"] = target_s - budget_s["heldout"]
    spoken_s = {"train": 0.0, "heldout": 0.0}
    spoken: list[SpokenUtterance] = []
    skipped = 0
    pending = iter(plans)

    def jobs() -> Iterator[tuple[UtterancePlan, FrontEndConfig]]:
        for plan in pending:
            if spoken_s[plan.split] < budget_s[plan.split]:
                yield plan, config.front_end

    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    results = pool.imap(_speak_with_config, jobs()) if pool else map(_speak_with_config, jobs())
    with tqdm(total=round(target_s), unit="s", desc="speech", disable=not progress) as bar:
        try:
            for utterance in results:
                if utterance is None:
                    skipped += 1
                    continue
                split = utterance.plan.split
                if spoken_s[split] >= budget_s[split]:
                    continue
                spoken.append(utterance)
                spoken_s[split] += utterance.duration_s
                bar.update(min(round(sum(spoken_s.values())), bar.total) - bar.n)
                if all(spoken_s[name] >= budget_s[name] for name in budget_s):
                    break
        finally:
            if pool:
                pool.terminate()
    return spoken, skipped


def build_corpus(config: CorpusConfig, out_dir: str | Path, workers: int = 2,
                 extractor_path: str | Path | None = None, progress: bool = True) -> dict:
    """Build (or reuse) the corpus in ``out_dir``; returns the manifest (with its ``summary``).

    ``extractor_path`` reuses a saved :class:`LogMelUnitExtractor` instead of fitting one, so two
    corpora can share one unit inventory.
    """
    out = Path(out_dir)
    if extractor_path is not None:
        config = replace(config, front_end=LogMelUnitExtractor.load(extractor_path).config)
    key = corpus_key(config) + ("" if extractor_path is None else "-" + hashlib.sha256(
        Path(extractor_path).read_bytes()).hexdigest()[:8])
    cached = _cached_manifest(out, key)
    if cached is not None:
        cached["summary"]["cached"] = True
        return cached
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    text_documents = unique_documents(config.text_sources)
    speech_documents = unique_documents(config.speech_sources) \
        if config.speech_sources != config.text_sources else text_documents
    plans = list(plan_utterances(speech_documents, config))
    get_espeak()
    spoken, skipped = synthesise_until(plans, config, workers, progress)
    train = [u for u in spoken if u.plan.split == "train"]
    if extractor_path is not None:
        extractor = LogMelUnitExtractor.load(extractor_path)
    else:
        extractor = LogMelUnitExtractor.fit([u.features for u in train], config.front_end,
                                            config.kmeans_max_frames, config.seed)
    extractor.save(out / FILES["extractor"])
    units = {u.plan.id: extractor.units_from_features(u.features) for u in spoken}
    for split in ("train", "heldout"):
        _write_jsonl(out / FILES[f"speech_{split}"], (
            {"id": u.plan.id, "units": units[u.plan.id].tolist(),
             "words": [span.to_json() for span in u.spans], "text": u.plan.text}
            for u in spoken if u.plan.split == split))
    _write_jsonl(out / FILES["speech_info"], (
        {"id": u.plan.id, "document_id": u.plan.document_id, "split": u.plan.split,
         "voice": u.plan.voice, "rate": u.plan.rate, "pitch": u.plan.pitch,
         "duration_s": round(u.duration_s, 3)} for u in spoken))
    heldout_ids = {d.id for d in text_documents + speech_documents
                   if is_heldout(d, config.heldout_percent, config.seed)}
    _write_jsonl(out / FILES["text_train"], ({"text": d.text} for d in text_documents
                                             if d.id not in heldout_ids))
    _write_jsonl(out / FILES["text_heldout"], ({"text": d.text} for d in text_documents
                                               if d.id in heldout_ids))
    heldout_documents = {d.id: d for d in text_documents + speech_documents if d.id in heldout_ids}
    _write_jsonl(out / FILES["heldout_documents"], (
        {"id": d.id, "sentences": list(d.sentences)} for d in heldout_documents.values()))
    summary = {
        "speech_hours": round(sum(u.duration_s for u in spoken) / 3600, 3),
        "speech_hours_heldout": round(sum(u.duration_s for u in spoken
                                          if u.plan.split == "heldout") / 3600, 3),
        "utterances": len(spoken),
        "utterances_skipped": skipped,
        "speech_documents": len({u.plan.document_id for u in spoken}),
        "spoken_words": sum(len(u.spans) for u in spoken),
        "units": int(sum(len(v) for v in units.values())),
        "text_documents_train": sum(d.id not in heldout_ids for d in text_documents),
        "text_documents_heldout": sum(d.id in heldout_ids for d in text_documents),
        "text_words_train": sum(d.num_words for d in text_documents if d.id not in heldout_ids),
        "num_units": extractor.num_units,
        "build_seconds": round(time.time() - started, 1),
        "cached": False,
    }
    manifest = {"key": key, "config": asdict(config), "espeak": library_fingerprint(),
                "files": FILES, "summary": summary}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest

