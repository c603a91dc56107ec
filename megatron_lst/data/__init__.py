"""Speech-text data: indexed documents, on-the-fly interleaving, packing, blending, sampling.

Flow: ``tools/preprocess_data.py`` writes indexed datasets (``indexed_writer``, ``speech_layout``);
``speech_documents`` reads a speech-text document back; ``interleave`` turns it into one token
stream with per-token metadata; ``packing`` fills fixed-position samples; ``datasets`` exposes them
as megatron-core ``MegatronDataset``s that ``blending`` mixes by weight; ``sampler`` holds the
resumable position in the blend. Formats are described in FORMATS.md next to this file.
"""
