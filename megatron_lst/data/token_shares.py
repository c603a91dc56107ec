"""Blend weights as shares of tokens, not of samples.

megatron-core's ``BlendedDataset`` draws *samples* in proportion to the blend weights. A sample
of LST's packed data holds a fixed number of global *positions*, and a position holds about one
text token but several speech units, so an interleaved sample carries about 2.4 times the raw
tokens of a text sample. Drawn 33:67 by samples, LST would train on about 54% interleaved tokens,
where the paper's runs had 1:2 by tokens. The fix is to draw dataset i with sample weight
``share_i / tokens_per_sample_i`` (normalised), measured on the dataset's own packing plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def sample_weights_for_token_shares(token_shares: Sequence[float], tokens_per_sample: Sequence[float]) -> list[float]:
    """Sample weights under which dataset i supplies ``token_shares[i]`` of the tokens (normalised).

    Worked example: shares 1:2, 300 and 100 tokens per sample -> samples 1/300 : 2/100 = 1 : 6,
    i.e. weights 1/7 and 6/7; per 7 samples 300 + 600 tokens, a 1:2 split.
    """
    if len(token_shares) != len(tokens_per_sample):
        raise ValueError(f"{len(token_shares)} token shares for {len(tokens_per_sample)} datasets")
    for index, (share, tokens) in enumerate(zip(token_shares, tokens_per_sample)):
        if not share > 0:
            raise ValueError(f"blend weight {index} must be positive, got {share}")
        if not tokens > 0:
            raise ValueError(f"dataset {index} has {tokens} tokens per sample: it cannot supply a share of tokens")
    raw = [share / tokens for share, tokens in zip(token_shares, tokens_per_sample)]
    total = sum(raw)
    return [value / total for value in raw]


def dataset_names(prefixes: Sequence[str]) -> list[str]:
    """Short, unique names of blended datasets for metrics: the prefix's file name (``#i`` if repeated)."""
    names = [Path(prefix).name for prefix in prefixes]
    return [f"{name}#{index}" if names.count(name) > 1 else name for index, name in enumerate(names)]
