#!/usr/bin/env python
"""LST's attention patterns at 4k, 8k and 16k tokens: the fast path against the dense reference.

One speech row of N tokens patched static p = 4 (N / 4 patches), 8 heads x 64, one thread,
forward + backward of one attention call per pattern:

- local self-attention, sliding window 512 tokens (encoder and decoder layers);
- encoder cross-attention: each patch query over the tokens of its own patch;
- decoder cross-attention: each token over the global outputs of its last 512 complete patches;
- global self-attention over the N / 4 patches, block-causal (SDPA with the mask on CPU, in both
  columns: on GPU it runs as packed THD sequences; it is listed for scale).

Each case runs in its own process, so its peak resident memory is its own. The dense reference
needs the full N x N score matrix: it is skipped above ``--dense-max-tokens`` (default 8k) and
extrapolated quadratically instead. Ends with the headline ratio of the fast local self-attention.

    .venv/bin/python bench/bench_attention.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATTERNS = ("local self", "encoder cross", "decoder cross", "global")
HEADS, HEAD_DIM, WINDOW, PATCH_SIZE = 8, 64, 512, 4


def static_patch_lengths(num_tokens: int):
    """BOS alone, then patches of 4 over the rest of the N + 1 tokens (a training sample's layout)."""
    import torch

    rest = num_tokens  # tokens 1..N (the last one the next-token target)
    lengths = [1] + [PATCH_SIZE] * (rest // PATCH_SIZE) + ([rest % PATCH_SIZE] if rest % PATCH_SIZE else [])
    return torch.tensor([lengths])


def build_case(pattern: str, num_tokens: int):
    """(query, key, value, attend) for one pattern; ``attend(implementation)`` returns the context."""
    import torch
    import torch.nn.functional as F

    from megatron_lst.models.interval_attention import interval_attention
    from megatron_lst.models.local_patterns import decoder_cross_mask, encoder_cross_mask, sliding_window_mask

    lengths = static_patch_lengths(num_tokens)
    num_patches = lengths.shape[1]
    if pattern == "local self":
        mask = sliding_window_mask(num_tokens, WINDOW, None, 1, torch.device("cpu"))
        shapes = (num_tokens, num_tokens)
    elif pattern == "encoder cross":
        mask = encoder_cross_mask(lengths, num_tokens, 0, None)
        shapes = (num_patches, num_tokens)
    elif pattern == "decoder cross":
        mask = decoder_cross_mask(lengths, num_tokens, WINDOW - 1, None)
        shapes = (num_tokens, num_patches)
    else:
        mask = None
        shapes = (num_patches, num_patches)
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(shapes[0], 1, HEADS, HEAD_DIM, generator=generator, requires_grad=True)
    key = torch.randn(shapes[1], 1, HEADS, HEAD_DIM, generator=generator, requires_grad=True)
    value = torch.randn(shapes[1], 1, HEADS, HEAD_DIM, generator=generator, requires_grad=True)
    scale = HEAD_DIM ** -0.5

    def attend(implementation: str):
        if mask is not None:
            return interval_attention(query, key, value, mask, scale, implementation)
        documents = torch.zeros(1, num_patches, dtype=torch.long)  # one document: the block-causal mask
        allowed = (documents[:, :, None] == documents[:, None, :]) & torch.ones(
            num_patches, num_patches, dtype=torch.bool).tril()
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=scale)

    return attend


def run_case(pattern: str, implementation: str, num_tokens: int, repeats: int) -> dict:
    """Time and peak memory of forward + backward (called in a child process)."""
    import torch

    torch.set_num_threads(1)
    attend = build_case(pattern, num_tokens)
    implementation = "blocked" if implementation == "fast" else "dense"
    attend(implementation).sum().backward()  # warm-up (and the mask/gather layouts)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for _ in range(repeats):
        attend(implementation).sum().backward()
    seconds = (time.perf_counter() - start) / repeats
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": seconds * 1e3, "peak_mb": max(peak_kb - baseline_kb, 0) / 1024, "rss_mb": peak_kb / 1024}


def measure(pattern: str, implementation: str, num_tokens: int, repeats: int) -> dict:
    command = [sys.executable, __file__, "--case", pattern, implementation, str(num_tokens), "--repeats", str(repeats)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                            env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        raise RuntimeError(f"{pattern} / {implementation} / {num_tokens}: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--dense-max-tokens", type=int, default=8192,
                        help="largest N the dense reference runs at (its scores are N x N per head)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--case", nargs=3, metavar=("PATTERN", "IMPL", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], args.case[1], int(args.case[2]), args.repeats)))
        return
    results: dict = {}
    print(f"{'pattern':14} {'tokens':>6} | {'fast ms':>9} {'fast MB':>8} | {'dense ms':>9} {'dense MB':>9} | dense/fast")
    for pattern in PATTERNS:
        for num_tokens in args.tokens:
            fast = measure(pattern, "fast", num_tokens, args.repeats)
            results[(pattern, num_tokens)] = fast
            if num_tokens <= args.dense_max_tokens and pattern != "global":  # global: one SDPA path
                dense = measure(pattern, "dense", num_tokens, args.repeats)
                dense_text = f"{dense['ms']:9.0f} {dense['peak_mb']:9.0f}"
                ratio = f"{dense['ms'] / fast['ms']:.1f}x"
            else:
                dense_text, ratio = f"{'(not run)':>9} {'':>9}", "-"
            print(f"{pattern:14} {num_tokens:6d} | {fast['ms']:9.0f} {fast['peak_mb']:8.0f} | {dense_text} | {ratio}",
                  flush=True)
    low, high = min(args.tokens), max(args.tokens)
    for pattern in PATTERNS:
        ratio = results[(pattern, high)]["ms"] / results[(pattern, low)]["ms"]
        print(f"{pattern}: fast-path time {high // 1024}k/{low // 1024}k tokens {ratio:.2f}x "
              f"(linear: {high / low:.0f}x, quadratic: {(high / low) ** 2:.0f}x)")
    headline = results[("local self", high)]["ms"] / results[("local self", low)]["ms"]
    print(f"local attention time {high // 1024}k/{low // 1024}k tokens: {headline:.2f}x")


if __name__ == "__main__":
    main()
