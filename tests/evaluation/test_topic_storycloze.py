"""Topic StoryCloze: the distractor is an off-topic sentence of another document, of similar length."""

from __future__ import annotations

import pytest

from megatron_lst.evaluation.benchmarks import HeldoutDocument, main
from megatron_lst.evaluation.items import read_items
from megatron_lst.evaluation.topic_storycloze import build_topic_storycloze, distant_documents

FARM = HeldoutDocument("a-farm", ("Farmers planted wheat early.", "Cattle grazed the meadow.",
                                  "Tractors ploughed fields daily.", "Harvest brought grain home.",
                                  "Farmers stored wheat safely."))
FARM2 = HeldoutDocument("b-farm", ("Farmers harvested wheat and grain in the meadow fields today.",
                                   "Cattle grazed."))
SPACE = HeldoutDocument("c-space", ("Rockets launched astronauts into orbit around planets.", "Stars shine.",
                                    "Telescopes watched distant galaxies."))
SPACE2 = HeldoutDocument("d-space", ("Orbit velocity matters greatly for rockets.", "Comets travel."))


def test_distractor_is_a_length_matched_sentence_of_the_least_similar_document():
    documents = [FARM, FARM2, SPACE, SPACE2]
    # the farm story shares 'farmers wheat cattle grazed meadow harvest grain' with b-farm only; both
    # space documents share nothing, a tie broken by id, and the least similar half of 3 is one document
    assert [documents[i].id for i in distant_documents(documents, 0)] == ["c-space"]
    for seed in range(5):
        (item,) = build_topic_storycloze(documents, seed=seed)
        assert item.prompt.text == " ".join(FARM.sentences[:4])
        assert item.endings[item.label].text == "Farmers stored wheat safely."
        # the 4-word true ending gets c-space's 4-word sentence, not its 7- or 2-word ones
        assert item.endings[1 - item.label].text == "Telescopes watched distant galaxies."


def test_length_matching_prefers_the_closest_word_count():
    far = HeldoutDocument("z-far", ("Quantum chromodynamics describes gluons.", "Quarks bind.",
                                    "Mesons decay rapidly into pions and leptons eventually."))
    (item,) = build_topic_storycloze([FARM, far], seed=0)
    assert item.endings[1 - item.label].text == "Quantum chromodynamics describes gluons."  # 4 words, like the true end


def test_deterministic_per_seed_and_labels_vary():
    documents = [FARM, FARM2, SPACE, SPACE2, HeldoutDocument("e-long", tuple(f"Sentence {i} here." for i in range(15)))]
    first = build_topic_storycloze(documents, seed=3, windows_per_document=3)
    assert first == build_topic_storycloze(list(reversed(documents)), seed=3, windows_per_document=3)
    assert len(first) == 4  # one window of the farm story, three of the long document
    labels = {item.label for seed in range(8) for item in build_topic_storycloze(documents, seed=seed)}
    assert labels == {0, 1}


def test_no_five_sentence_document_is_a_clear_error():
    with pytest.raises(ValueError, match="5 sentences"):
        build_topic_storycloze([FARM2, SPACE])


def test_cli_writes_topic_items(tmp_path):
    import json
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"id": d.id, "sentences": list(d.sentences)}) + "\n"
                               for d in (FARM, SPACE)))
    assert main(["--heldout", str(heldout), "--kind", "topic_storycloze", "--output", str(tmp_path / "t.jsonl")]) == 0
    (item,) = read_items(tmp_path / "t.jsonl")
    assert item.id == "topic_storycloze/a-farm/0" and item.endings[1 - item.label].text in SPACE.sentences
