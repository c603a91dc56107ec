"""Incremental generation with KV caches (LST.md §8: the global model steps once per patch).

- kv_cache.py        growing / sliding key-value caches with per-row validity
- layer_steps.py     one step of a megatron-core layer (self-attention, cross-attention, MLP)
                     on the model's own weights, reading and extending a cache
- patch_tracker.py   static patch boundaries decided token by token while generating
- lst_stepper.py     the LST's encoder, global model and decoder stepped with caches
- baseline_stepper.py the baseline GPTModel stepped with a cache
- sampling.py        greedy / temperature / top-k / top-p
- generate.py        the batched generation loop, stop rules, uncached reference path
- loading.py         a stepper from a checkpoint (through evaluation.model_scorer)
- vocoder.py         units -> waveform (demo Griffin-Lim vocoder, pluggable)
"""
