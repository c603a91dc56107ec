"""Counts gathered while preprocessing, printed at the end and stored in the dataset metadata."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_lst.data.jsonl_records import SPEECH_FORMAT


@dataclass
class RunSummary:
    input_format: str
    unit_rate: float
    documents: int = 0
    lines: int = 0  # speech: input lines (documents differ when utterances are cut into segments)
    words: int = 0
    text_tokens: int = 0
    units: int = 0
    silence_frames: int = 0
    skipped_lines: int = 0

    def add(self, results: list) -> None:
        """Accumulate the good ``LineResult``s of one chunk."""
        for result in results:
            if self.input_format == SPEECH_FORMAT:
                self.lines += 1
                for document in result.speech:
                    self.documents += 1
                    self.words += document.num_words
                    self.text_tokens += document.num_text_tokens
                    self.units += document.num_units
                    self.silence_frames += document.num_silence_frames
            else:
                self.documents += 1
                first_key_ids = next(iter(result.text_ids.values()))
                self.text_tokens += len(first_key_ids)
                self.words += result.text_words

    @property
    def hours_of_speech(self) -> float:
        return self.units / self.unit_rate / 3600.0

    def as_dict(self) -> dict:
        summary = {
            "documents": self.documents,
            "words": self.words,
            "text_tokens": self.text_tokens,
            "tokens_per_word": round(self.text_tokens / self.words, 4) if self.words else 0.0,
            "skipped_lines": self.skipped_lines,
        }
        if self.input_format == SPEECH_FORMAT:
            summary.update(
                lines=self.lines,
                units=self.units,
                silence_frames=self.silence_frames,
                hours_of_speech=round(self.hours_of_speech, 4),
            )
        return summary

    def render(self) -> str:
        lines = [f"done ({self.input_format}):"]
        lines += [f"  {key.replace('_', ' ')}: {value}" for key, value in self.as_dict().items()]
        return "\n".join(lines)
