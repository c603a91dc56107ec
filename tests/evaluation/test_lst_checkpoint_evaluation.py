"""An LST checkpoint (two iterations on text) scored with static patching at TP=1.

Marked slow: a second real checkpoint would push tests/evaluation past its one-minute budget.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import run_pretrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lst_scorer(text_corpus, tmp_path_factory):
    from megatron_lst.evaluation.model_scorer import CheckpointScorer
    from megatron_lst.training.initialize import destroy_distributed

    folder = tmp_path_factory.mktemp("lst_ckpt")
    run_pretrain([
        "--model-flavour", "debug", "--model", "lst",
        "--data-path", text_corpus.data_prefix, "--tokenizer-model", str(text_corpus.tokenizer_model),
        "--data-cache-path", str(folder / "index_cache"), "--seq-length", "64",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-3", "--lr-warmup-iters", "2",
        "--eval-interval", "1000", "--eval-iters", "1", "--seed", "7", "--train-iters", "2",
        "--save", str(folder / "ckpt"),
    ])
    yield CheckpointScorer.from_checkpoint(folder / "ckpt")
    destroy_distributed()


def mixed_sequence(tokenizer, rng: np.random.Generator, num_text: int, num_units: int) -> np.ndarray:
    text = rng.integers(0, tokenizer.vocab.text_vocab_size, size=num_text)
    units = tokenizer.encode_units(rng.integers(0, 500, size=num_units))
    return np.concatenate([[tokenizer.bos_id, tokenizer.text_marker_id], text,
                           [tokenizer.speech_marker_id], units]).astype(np.int64)


def test_lst_log_probs_ignore_padding_and_later_tokens(lst_scorer):
    rng = np.random.default_rng(0)
    tokenizer = lst_scorer.tokenizer
    sequences = [mixed_sequence(tokenizer, rng, n, u) for n, u in ((3, 9), (6, 2), (2, 14))]
    together = lst_scorer.token_logprobs(sequences)
    for sequence, batched in zip(sequences, together):
        single = lst_scorer.token_logprobs([sequence])[0]
        assert batched.shape == (len(sequence) - 1,) and np.all(batched < 0)
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)
    # appending units regroups the last static patch; earlier predictions must not notice (one-patch lag)
    longer = np.concatenate([sequences[0], tokenizer.encode_units([7, 8, 9])])
    np.testing.assert_allclose(lst_scorer.token_logprobs([longer])[0][:len(sequences[0]) - 1], together[0],
                               rtol=1e-5, atol=1e-5)
