"""Speech with exact word times from espeak-ng's C API (ctypes).

espeak-ng's command line gives no timings, but its library reports WORD and PHONEME events with
sample positions while it synthesises (docs/demo_data.md). This module owns that binding:

* The library is a process-wide singleton (a second ``espeak_Initialize`` silently re-routes audio),
  so :func:`get_espeak` returns the one :class:`Espeak` of this process; voices and rates are
  switched per call with ``espeak_SetVoiceByName`` / ``espeak_SetParameter``.
* Unstressed function words get no WORD event ("in the attack" -> events for "in" and "attack"), so
  words are grouped from one WORD event's ``text_position`` to the next. A group ends at the next
  WORD event or at the first pause (an empty PHONEME) after it. Group borders are espeak's own
  times; the border between two words *inside* one group is placed at the phoneme boundary nearest
  to a split in proportion to the words' letter counts (``in|the`` -> ``ɪ n | ð ɪ``).

espeak-ng keeps a little state between calls (repeating a text shifts its samples by a millisecond
or two), so synthesis is reproducible in a fresh process but not bit for bit across call orders.

espeak-ng is GPL-3: it is loaded at run time (from ``pip install espeakng-loader`` or Debian's
``libespeak-ng1``) and never vendored.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_lst.demo.normalise import WORD_PATTERN as _WORD_PATTERN
from megatron_lst.demo.normalise import words_of

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_OPTIONS = 0x8003  # phoneme events | IPA phoneme names | don't exit on error
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_EVENT_LIST_TERMINATED, _EVENT_WORD, _EVENT_END, _EVENT_PHONEME = 0, 1, 5, 7

DEFAULT_VOICES = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us+f3", "en+f2",
                  "en-us+m3")


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class WordTiming:
    """One word of the input and where it is spoken, in samples (``end`` exclusive)."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Synthesis:
    """Audio of one ``synthesize`` call: float32 mono in [-1, 1] and the words' timings."""

    waveform: np.ndarray
    sample_rate: int
    words: tuple[WordTiming, ...]

    @property
    def duration_s(self) -> float:
        return len(self.waveform) / self.sample_rate


@dataclass(frozen=True)
class _RawEvent:
    kind: int
    text_position: int
    sample: int
    phoneme: str


def _locate_library() -> tuple[str, str | None]:
    """``(library path, data path)``: the pip-bundled espeak-ng if installed, else Debian's."""
    try:
        import espeakng_loader
    except ImportError:
        system = ctypes.util.find_library("espeak-ng")
        if system is None:
            raise OSError(
                "espeak-ng not found: `pip install espeakng-loader==0.2.4` or "
                "`apt-get install libespeak-ng1`") from None
        return system, None
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


class Espeak:
    """The process's espeak-ng instance. Do not construct it directly: use :func:`get_espeak`."""

    def __init__(self, library_path: str, data_path: str | None) -> None:
        self._lib = ctypes.CDLL(library_path)
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Info.restype = ctypes.c_char_p
        data = data_path.encode() if data_path else None
        self.sample_rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _OPTIONS)
        if self.sample_rate <= 0:
            raise OSError(f"espeak_Initialize failed (data path {data_path!r})")
        self.version = self._lib.espeak_Info(None).decode()
        self.library_path = library_path
        self._samples: list[np.ndarray] = []
        self._events: list[_RawEvent] = []
        self._callback = _SynthCallback(self._on_audio)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _on_audio(self, wav, num_samples: int, events) -> int:
        if num_samples > 0:
            self._samples.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            phoneme = ""
            if event.type == _EVENT_PHONEME:
                phoneme = bytes(event.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
            self._events.append(_RawEvent(event.type, event.text_position, event.sample, phoneme))
            index += 1
        return 0

    def check_voice(self, voice: str) -> None:
        """Raise ValueError naming ``voice`` when espeak-ng has no such voice, so that a tool can refuse
        it before it opens any output (the voice is otherwise only found missing at the first item)."""
        with self._lock:
            self._set_voice(voice)

    def _set_voice(self, voice: str) -> None:
        if "\0" in voice or self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r} (try one of {DEFAULT_VOICES})")

    def synthesize(self, text: str, voice: str = "en-us", rate: int = 175,
                   pitch: int = 50) -> Synthesis:
        """Speak normalised ``text`` (see :mod:`normalise`) with a voice, a rate in words per
        minute and a pitch (0-100); return the waveform and one timing per word of ``text``."""
        with self._lock:
            self._set_voice(voice)
            self._lib.espeak_SetParameter(_RATE, rate, 0)
            self._lib.espeak_SetParameter(_PITCH, pitch, 0)
            self._samples, self._events = [], []
            encoded = text.encode("utf-8")
            buffer = ctypes.create_string_buffer(encoded)
            self._lib.espeak_Synth(buffer, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                   None, None)
            self._lib.espeak_Synchronize()
            pcm = np.concatenate(self._samples) if self._samples else np.zeros(0, np.int16)
            events = list(self._events)
        waveform = pcm.astype(np.float32) / 32768.0
        return Synthesis(waveform, self.sample_rate, tuple(group_word_timings(text, events,
                                                                              len(pcm))))


def group_word_timings(text: str, events: list[_RawEvent], num_samples: int) -> list[WordTiming]:
    """Word timings from espeak events (see the module docstring for the grouping rule).

    Every word of ``words_of(text)`` appears exactly once, in order, with ``start < end``.
    """
    words = words_of(text)
    word_events = _word_events_by_word_index(text, events)
    if not words:
        return []
    if not word_events:
        raise RuntimeError(f"espeak gave no word events for {text!r}")
    word_events[0] = (0, word_events[0][1])
    timings = []
    for index, (first_word, event) in enumerate(word_events):
        following = word_events[index + 1] if index + 1 < len(word_events) else None
        last_word = following[0] if following else len(words)
        sample_end = following[1].sample if following else num_samples
        phonemes = [e for e in events if e.kind == _EVENT_PHONEME
                    and event.sample <= e.sample < sample_end]
        pause = next((e.sample for e in phonemes if e.phoneme == "" and e.sample > event.sample),
                     None)
        end = min(pause, sample_end) if pause is not None else sample_end
        spoken = [e.sample for e in phonemes if e.phoneme != "" and e.sample < end]
        timings.extend(_split_group(words[first_word:last_word], event.sample, end, spoken))
    return timings


def _word_events_by_word_index(text: str, events: list[_RawEvent]) -> list[tuple[int, _RawEvent]]:
    """WORD events keyed by the index of the word they start, strictly increasing.

    espeak's ``text_position`` (1-based) sometimes points one character into a short word ("p|er
    cent", "s|o far") or gives a second event inside a word ("Mc|Kenzie", "X|VI"). A position
    inside a word belongs to that word; a position between words belongs to the next word; a second
    event for the same word is dropped, so the word keeps its first (earliest) time.
    """
    spans = [match.span() for match in _WORD_PATTERN.finditer(text)]
    ends = np.array([end for _, end in spans], dtype=np.int64)
    keyed: list[tuple[int, _RawEvent]] = []
    for event in events:
        if event.kind != _EVENT_WORD:
            continue
        char = event.text_position - 1
        word_index = int(np.searchsorted(ends, char, side="right"))
        if word_index >= len(spans):
            continue
        if keyed and word_index <= keyed[-1][0]:
            continue
        keyed.append((word_index, event))
    return keyed


def _split_group(words: list[str], start: int, end: int,
                 phoneme_starts: list[int]) -> list[WordTiming]:
    """Share one event group's span among its words (see the module docstring)."""
    if len(words) == 1:
        return [WordTiming(words[0], start, max(end, start + 1))]
    letters = np.cumsum([len(word) for word in words], dtype=np.float64)
    boundaries = [start]
    candidates = sorted(set(p for p in phoneme_starts if start < p < end))
    for fraction in letters[:-1] / letters[-1]:
        target = start + fraction * (end - start)
        if candidates:
            target = min(candidates, key=lambda p: abs(p - target))
        boundaries.append(int(round(target)))
    boundaries.append(end)
    for index in range(1, len(boundaries)):
        boundaries[index] = max(boundaries[index], boundaries[index - 1] + 1)
    return [WordTiming(word, boundaries[i], boundaries[i + 1]) for i, word in enumerate(words)]


_INSTANCE: Espeak | None = None
_INSTANCE_LOCK = threading.Lock()


def get_espeak() -> Espeak:
    """The process's single espeak-ng instance, created on first use."""
    global _INSTANCE
    with _INSTANCE_LOCK:
        if _INSTANCE is None:
            library_path, data_path = _locate_library()
            _INSTANCE = Espeak(library_path, data_path)
        return _INSTANCE


def espeak_available() -> bool:
    """Whether espeak-ng can be loaded here (tests skip when it cannot)."""
    try:
        get_espeak()
    except OSError:
        return False
    return True


def library_fingerprint() -> str:
    """espeak-ng version and library path: phonemes and timings differ between versions, so
    cached corpora are keyed by this."""
    instance = get_espeak()
    return f"{instance.version}:{Path(instance.library_path).name}"
