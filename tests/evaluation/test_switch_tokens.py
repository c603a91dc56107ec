"""The switch-token evaluation: layouts, the switch index and the partial-last-patch flag by hand."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_lst.evaluation.switch_tokens import switch_sequences, switch_token_nll
from megatron_lst.tokenizer import JointTokenizer


@pytest.fixture(scope="module")
def tokenizer(text_corpus) -> JointTokenizer:
    return JointTokenizer.from_file(text_corpus.tokenizer_model)


def test_layouts_and_switch_positions(tokenizer):
    segments = [{"text": "the end", "units": [3, 4, 5, 6, 7]}, {"text": "so", "units": [1, 2, 3, 4]},
                {"text": "empty", "units": []}]
    sequences = switch_sequences(segments, tokenizer, patch_size=4)
    units = list(tokenizer.encode_units([3, 4, 5, 6, 7]))
    to_text = sequences["<t> after speech"][0]
    assert to_text.tokens.tolist() == [tokenizer.bos_id, tokenizer.speech_marker_id, *units, tokenizer.text_marker_id,
                                       *tokenizer.encode_text("the end"), tokenizer.eos_id]
    assert to_text.switch_index == 7 and to_text.tokens[7] == tokenizer.text_marker_id
    to_end = sequences["EOS after speech"][0]
    assert to_end.tokens.tolist() == [tokenizer.bos_id, tokenizer.speech_marker_id, *units, tokenizer.eos_id]
    assert to_end.switch_index == 7
    # 5 units at p = 4 leave a 1-unit last patch (where the paper rule looks ahead); 4 units do not
    assert [s.last_patch_partial for s in sequences["EOS after speech"]] == [True, False]
    assert len(sequences["<t> after speech"]) == 2  # a segment without units has no speech span


class FixedScorer:
    """log p(token k + 1) = -(k + 1) / 10: the switch token at index i scores i / 10 nats."""

    def token_logprobs(self, sequences):
        return [-(np.arange(1, len(sequence)) / 10.0) for sequence in sequences]


def test_nll_reads_the_switch_tokens_log_prob(tokenizer):
    sequences = switch_sequences([{"text": "a", "units": [1, 2, 3, 4, 5]}, {"text": "b", "units": [1, 2, 3, 4]}],
                                 tokenizer, patch_size=4)["EOS after speech"]
    scores = switch_token_nll(FixedScorer(), sequences, batch_size=1)
    assert scores["nll"] == pytest.approx((0.7 + 0.6) / 2)  # switch indices 7 and 6
    assert scores["nll_partial_last_patch"] == pytest.approx(0.7)
    assert (scores["sequences"], scores["partial_last_patch"]) == (2, 1)
