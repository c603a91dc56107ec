"""megatron-lst: the Latent Speech-Text Transformer on megatron-core.

Subpackages, in the order a token flows through them: ``tokenizer`` (joint vocabulary),
``data`` (indexed speech-text documents, interleaving, packing), ``patching`` (patch
boundaries), ``models`` (LST and the interleaved baseline), ``training`` (the loop).
"""

__version__ = "0.1.0"
