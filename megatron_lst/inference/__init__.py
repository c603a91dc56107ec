"""Incremental generation with KV caches (docs/method.md §8: the global model steps once per patch).

- kv_cache.py         growing / sliding key-value caches with per-row validity
- layer_steps.py      one step of a megatron-core layer (self-attention + MLP, cross-attention) on
                      the model's own weights, reading and extending a cache
- rotary.py           RoPE frequencies at per-row positions
- patch_tracker.py    static patch boundaries decided token by token while generating
- lst_stepper.py      the LST's encoder, global model and decoder stepped with caches
- baseline_stepper.py the baseline GPTModel stepped with a cache
- uncached.py         reference steppers that re-run the full forward pass (tests, benchmark)
- sampling.py         greedy / temperature / top-k / top-p
- generate.py         the batched generation loop and its stop rules
- tasks.py            prompts for continuation, TTS and ASR; transcribe / synthesize
- loading.py          a generator from a checkpoint (built as evaluation builds it)
- vocoder.py          units -> waveform (demo Griffin-Lim vocoder, pluggable)
"""
