"""Blend weights as token shares: the arithmetic by hand, and the realised shares on the demo blend."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_lst.data.blending import blend_from_data_path, build_lst_datasets
from megatron_lst.data.datasets import LSTDatasetConfig
from megatron_lst.data.interleave import InterleaveConfig
from megatron_lst.data.token_shares import dataset_names, sample_weights_for_token_shares
from megatron_lst.tokenizer import JointTokenizer
from tests.data.demo_blend import build_demo_like_corpora


def test_sample_weights_worked_by_hand():
    # shares 1:2 with 300 and 100 tokens per sample: samples 1/300 : 2/100 = 1 : 6
    assert sample_weights_for_token_shares([1, 2], [300, 100]) == pytest.approx([1 / 7, 6 / 7])
    # equal tokens per sample: token shares are sample shares
    assert sample_weights_for_token_shares([0.33, 0.67], [128, 128]) == pytest.approx([0.33, 0.67])


def test_bad_shares_or_empty_datasets_are_clear_errors():
    with pytest.raises(ValueError, match="2 token shares for 3 datasets"):
        sample_weights_for_token_shares([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="dataset 1 has 0 tokens per sample"):
        sample_weights_for_token_shares([1, 2], [10, 0])
    with pytest.raises(ValueError, match="blend weight 0 must be positive"):
        sample_weights_for_token_shares([0, 2], [10, 10])


def test_dataset_names_are_short_and_unique():
    assert dataset_names(["/d/speech_speech_document", "/d/text_text_document"]) == [
        "speech_speech_document", "text_text_document"]
    assert dataset_names(["/a/x", "/b/x", "/c/y"]) == ["x#0", "x#1", "y"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, str, str]:
    return build_demo_like_corpora(tmp_path_factory.mktemp("token_shares"))


def realised_shares(corpus, weight_by: str, samples: int = 400) -> np.ndarray:
    """Token share of each dataset over the first ``samples`` samples of the 33:67 blend."""
    model, speech, text = corpus
    vocab = JointTokenizer.from_file(model).vocab
    positions = 129
    config = LSTDatasetConfig(random_seed=3, sequence_length=positions, split="1,0,0",
                              blend=blend_from_data_path(["0.33", speech, "0.67", text]), vocab=vocab,
                              interleave=InterleaveConfig(seed=3), patch_size=4, max_tokens=4 * positions)
    train = build_lst_datasets(config, [samples, 0, 0], weight_by=weight_by)[0]
    tokens = np.zeros(2)
    for index in range(samples):
        item = train[index]
        tokens[int(item["dataset_id"])] += len(item["tokens"])
    return tokens / tokens.sum()


def test_token_weighting_realises_the_blend_by_tokens_where_sample_weighting_does_not(corpus):
    by_tokens = realised_shares(corpus, "tokens")
    by_samples = realised_shares(corpus, "samples")
    assert by_tokens[0] == pytest.approx(0.33, abs=0.02)
    # an interleaved sample holds several times a text sample's tokens: drawn by samples, speech
    # would take far more than its third of the tokens
    assert by_samples[0] > 0.45


def test_unknown_weighting_is_refused(corpus):
    model, speech, _ = corpus
    config = LSTDatasetConfig(random_seed=3, sequence_length=65, split="1,0,0", blend=([speech], None),
                              vocab=JointTokenizer.from_file(model).vocab)
    with pytest.raises(ValueError, match="tokens', 'samples"):
        build_lst_datasets(config, [4, 0, 0], weight_by="positions")
