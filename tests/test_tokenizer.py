"""The joint vocabulary: layout, round trips, SentencePiece training, bad ids."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_lst.tokenizer import JointTokenizer, SentencePieceText, VocabLayout, train_sentencepiece

LINES = [
    "the quick brown fox jumps over the lazy dog",
    "speech and text share one vocabulary in this model",
    "a spoken word costs about six units but little more than one text token",
] * 20


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> JointTokenizer:
    model = train_sentencepiece(LINES, tmp_path_factory.mktemp("spm") / "bpe", vocab_size=120)
    return JointTokenizer.from_file(model)


def test_layout_is_text_then_specials_then_markers_then_units():
    layout = VocabLayout(text_vocab_size=100, num_units=501, spare_units=1)
    assert (layout.bos_id, layout.eos_id, layout.pad_id) == (100, 101, 102)
    assert (layout.text_marker_id, layout.speech_marker_id) == (103, 104)
    assert layout.unit_offset == 105
    assert layout.vocab_size == 105 + 502
    ids = np.array([0, 99, 100, 104, 105, 606, 607])
    assert layout.is_text(ids).tolist() == [True, True, False, False, False, False, False]
    assert layout.is_unit(ids).tolist() == [False, False, False, False, True, True, False]


def test_text_round_trips(tokenizer):
    text = "the lazy dog jumps over the quick fox"
    ids = tokenizer.encode_text(text)
    assert all(0 <= i < tokenizer.vocab.text_vocab_size for i in ids)
    assert tokenizer.text_model.decode(ids) == text


def test_units_round_trip_and_render(tokenizer):
    units = np.array([0, 7, 500, 501])  # 501 is the spare slot
    ids = tokenizer.encode_units(units)
    assert ids.tolist() == (units + tokenizer.unit_offset).tolist()
    assert tokenizer.decode_units(ids).tolist() == units.tolist()
    mixed = [tokenizer.bos_id, tokenizer.text_marker_id, *tokenizer.encode_text("the dog"),
             tokenizer.speech_marker_id, *ids[:2].tolist(), tokenizer.eos_id]
    assert tokenizer.decode(mixed) == "<bos><t>the dog<s>[0][7]<eos>"


def test_out_of_range_units_and_ids_are_rejected(tokenizer):
    with pytest.raises(ValueError, match="speech unit 502 is outside"):
        tokenizer.encode_units([1, 502])
    with pytest.raises(ValueError, match="speech unit -1"):
        tokenizer.encode_units([-1])
    with pytest.raises(ValueError, match="outside the joint vocabulary"):
        tokenizer.decode([tokenizer.vocab_size])


def test_unit_count_is_configurable(tokenizer):
    small = JointTokenizer(tokenizer.text_model, num_units=100, spare_units=0)
    assert small.vocab_size == tokenizer.vocab.text_vocab_size + 5 + 100
    assert small.layout()["num_units"] == 100


def test_missing_model_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        SentencePieceText(tmp_path / "nothing.model")


def test_tiktoken_rank_file_loads_locally(tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    import base64

    ranks = [bytes([b]) for b in range(256)] + [b"th", b"the"]
    (tmp_path / "tiny.tiktoken").write_text(
        "".join(f"{base64.b64encode(tok).decode()} {rank}\n" for rank, tok in enumerate(ranks))
    )
    joint = JointTokenizer.from_file(tmp_path / "tiny.tiktoken")
    assert joint.vocab.text_vocab_size == 258
    ids = joint.encode_text("the cat")
    assert ids[0] == 257 and joint.text_model.decode(ids) == "the cat"
    del tiktoken


def hf_tokenizer_json(folder, corpus: list[str], vocab_size: int) -> str:
    """A byte-level BPE trained with the tokenizers library and saved as tokenizer.json, as
    Llama-3- or Mistral-style models ship their text tokenizer."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, decoders, trainers

    model = tokenizers.Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    model.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|begin|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir(parents=True, exist_ok=True)
    model.save(str(folder / "tokenizer.json"))
    return str(folder / "tokenizer.json")


def test_hugging_face_tokenizer_json_is_a_text_model(tmp_path):
    from megatron_lst.tokenizer import HuggingFaceText, load_text_model, text_model_difference, text_model_type

    corpus = ["the cat sat on the mat", "a dog ran in the park", "speech and text share one vocabulary"] * 20
    path = hf_tokenizer_json(tmp_path / "hf", corpus, vocab_size=300)
    assert text_model_type(path) == text_model_type(tmp_path / "hf") == "huggingface"
    for source in (path, tmp_path / "hf"):  # the file or its folder
        model = load_text_model(source)
        assert isinstance(model, HuggingFaceText)
    ids = model.encode("the cat ran")
    assert ids and max(ids) < model.vocab_size and model.decode(ids) == "the cat ran"
    joint = JointTokenizer(model, num_units=10)
    assert joint.vocab.bos_id == model.vocab_size  # specials follow the file's own ids
    assert joint.decode(joint.encode_text("the dog")) == "the dog"
    assert text_model_difference(model.describe(), load_text_model(path).describe()) is None
    other = load_text_model(hf_tokenizer_json(tmp_path / "other", ["zebra quartz vexing jumps"] * 60, 300))
    assert text_model_difference(model.describe(), other.describe()) is not None  # other pieces


def test_tokenizer_type_names_the_backend(tmp_path):
    from megatron_lst.tokenizer import load_text_model

    with pytest.raises(ValueError, match="tokenizer type"):
        load_text_model(tmp_path / "x.model", "wordpiece")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_text_model(tmp_path / "x.model", "huggingface")
