"""Speech for a text benchmark: prompt and endings spoken separately, units from a saved extractor."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from megatron_lst.demo.espeak import espeak_available, get_espeak
from megatron_lst.demo.normalise import normalise_text, words_of
from megatron_lst.demo.units import FrontEndConfig, LogMelUnitExtractor, log_mel_features
from megatron_lst.evaluation.items import Item, Part, read_items, write_items
from megatron_lst.evaluation.speech import PartSynthesizer
from tests.conftest import REPO_ROOT, child_env

pytestmark = pytest.mark.skipif(not espeak_available(), reason="pip install espeakng-loader")
SMALL = FrontEndConfig(pca_dim=16, num_units=20)


@pytest.fixture(scope="module")
def extractor_path(tmp_path_factory):
    sentences = ["The quick brown fox jumps over the lazy dog.", "She sells sea shells by the sea shore."]
    features = [log_mel_features(s.waveform, s.sample_rate, SMALL)
                for s in (get_espeak().synthesize(text) for text in sentences)]
    path = tmp_path_factory.mktemp("extractor") / "unit_extractor.npz"
    LogMelUnitExtractor.fit(features, SMALL).save(path)
    return path


def story_item(label: int) -> Item:
    return Item(f"s{label}", label, Part(text="Tom went to the park. He saw a dog."),
                (Part(text="He threw it a ball."), Part(text="The bank raised its rates.")))


def test_each_part_is_spoken_on_its_own(extractor_path):
    extractor = LogMelUnitExtractor.load(extractor_path)
    synthesizer = PartSynthesizer(extractor)
    spoken = synthesizer.part(Part(text="He threw it a ball."))
    alone = get_espeak().synthesize("He threw it a ball.")
    expected = extractor.transform(alone.waveform, alone.sample_rate)
    assert spoken.text == "He threw it a ball." and len(spoken.units) > 10
    assert all(0 <= unit < SMALL.num_units for unit in spoken.units)
    # espeak keeps a little state between calls: lengths agree to a frame or two, not bit for bit
    assert abs(len(spoken.units) - len(expected)) <= 2


def synthesize_two_stories(extractor_path, tmp_path) -> subprocess.CompletedProcess:
    """tools/synthesize_benchmark.py on two story items; the output is tmp_path / speech.jsonl."""
    write_items(tmp_path / "text.jsonl", [story_item(0), story_item(1)])
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "synthesize_benchmark.py"), "--input", str(tmp_path / "text.jsonl"),
         "--output", str(tmp_path / "speech.jsonl"), "--extractor", str(extractor_path)],
        env=child_env(), capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_cli_fills_units_on_every_part(extractor_path, tmp_path):
    result = synthesize_two_stories(extractor_path, tmp_path)
    assert "wrote 2 items" in result.stdout
    items = read_items(tmp_path / "speech.jsonl")
    assert [item.label for item in items] == [0, 1]
    for item in items:
        assert item.prompt.units and all(ending.units for ending in item.endings)
        assert item.prompt.text == "Tom went to the park. He saw a dog."
    # the same sentence gets the same units wherever it appears (one synthesis, cached)
    assert items[0].prompt.units == items[1].prompt.units
    assert np.asarray(items[0].endings[0].units).max() < SMALL.num_units


def assert_word_times_tile_units(part: Part) -> None:
    """A synthesised part's segments cover its units exactly, one word segment per spoken word."""
    assert part.segments, "the part has no word times"
    cursor = 0
    for start, end, kind in part.segments:
        assert start == cursor and end > start and kind in ("word", "sil")
        cursor = end
    assert cursor == len(part.units)
    words = [segment for segment in part.segments if segment.kind == "word"]
    assert len(words) == len(words_of(normalise_text(part.text)))
    # never two silences in a row: a silence is a gap between words (or before / after them)
    kinds = [segment.kind for segment in part.segments]
    assert all(not (a == b == "sil") for a, b in zip(kinds, kinds[1:]))


def test_synthesised_parts_carry_word_times_that_cover_their_units(extractor_path, tmp_path):
    synthesize_two_stories(extractor_path, tmp_path)
    for item in read_items(tmp_path / "speech.jsonl"):  # read_items also validates the segments
        for _, part in item.named_parts():
            assert_word_times_tile_units(part)
    # "He threw it a ball.": five words
    spoken = PartSynthesizer(LogMelUnitExtractor.load(extractor_path)).part(Part(text="He threw it a ball."))
    assert [s.kind for s in spoken.segments].count("word") == 5


@pytest.mark.parametrize("bad", [["--voice", "no-such-voice"], ["--rate", "5"], ["--pitch", "101"],
                                 ["--extractor", "missing.npz"]])
def test_bad_arguments_exit_2_and_leave_the_earlier_output_byte_identical(extractor_path, tmp_path, bad):
    write_items(tmp_path / "text.jsonl", [story_item(0)])
    output = tmp_path / "speech.jsonl"
    earlier = b'{"an earlier run": true}\n\x00tail'
    output.write_bytes(earlier)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "synthesize_benchmark.py"), "--input", str(tmp_path / "text.jsonl"),
         "--output", str(output), "--extractor", str(extractor_path), *bad],
        env=child_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and bad[1] in lines[0], result.stderr
    assert output.read_bytes() == earlier
    assert sorted(path.name for path in tmp_path.iterdir()) == ["speech.jsonl", "text.jsonl"]
