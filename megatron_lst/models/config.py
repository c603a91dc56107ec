"""Model shapes as dataclasses, and the one registry of named flavours.

A flavour fixes the *global* transformer (identical for LST and the baseline, so that
compute- and data-controlled comparisons differ in one flag) and the LST's local patch
encoder/decoder. Shapes of ``420m`` and ``1b`` are the paper's (docs/method.md §2, §5); ``7b`` is this
project's choice (the paper gives no local shapes for it); ``debug`` runs on a CPU in seconds and
``demo`` is the CPU demo's (a few minutes); ``1b-mini`` has the 1b's depths at CPU widths (benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the global transformer and (for LST) of the local modules."""

    # Global transformer (and the whole baseline).
    num_layers: int = field(default=2, metadata={"help": "global transformer layers"})
    hidden_size: int = field(default=64, metadata={"help": "global model width"})
    num_attention_heads: int = field(default=4, metadata={"help": "global attention heads"})
    num_query_groups: Optional[int] = field(
        default=None, metadata={"help": "key/value groups for GQA in the global model (None = MHA)"}
    )
    ffn_hidden_size: Optional[int] = field(
        default=None, metadata={"help": "MLP width (None = 8/3 x hidden, rounded to 64, for SwiGLU)"}
    )
    rotary_base: float = field(default=500000.0, metadata={"help": "RoPE theta (paper: 5e5)"})
    init_method_std: float = field(default=0.02, metadata={"help": "std of the normal weight init"})
    normalization: str = field(default="RMSNorm", metadata={"help": "RMSNorm or LayerNorm"})
    swiglu: bool = field(default=True, metadata={"help": "SwiGLU MLP (gated SiLU)"})
    # Local modules (LST only).
    encoder_num_layers: int = field(default=1, metadata={"help": "patch encoder layers"})
    encoder_hidden_size: int = field(default=64, metadata={"help": "patch encoder width"})
    encoder_num_attention_heads: int = field(default=4, metadata={"help": "patch encoder heads"})
    decoder_num_layers: int = field(default=1, metadata={"help": "patch decoder layers"})
    decoder_hidden_size: int = field(default=64, metadata={"help": "patch decoder width"})
    decoder_num_attention_heads: int = field(default=4, metadata={"help": "patch decoder heads"})
    local_window_size: int = field(
        default=512, metadata={"help": "sliding-window size (tokens) of local self-attention"}
    )
    cross_attn_k: int = field(default=1, metadata={"help": "query vectors per patch in the encoder"})
    cross_attn_window_encoder: int = field(
        default=1,
        metadata={"help": "patches whose tokens a patch query of the encoder attends: its own and the "
                          "window - 1 before it (1 = own patch only; the reference code uses 512; 0 = all earlier)"},
    )
    cross_attn_window_decoder: int = field(
        default=512,
        metadata={"help": "global patch outputs a decoder token attends: its lagged patch and the window - 1 "
                          "before it (the reference code's 512; 0 = every earlier patch)"},
    )

    def __post_init__(self) -> None:
        minimums = {"cross_attn_window_encoder": 0, "cross_attn_window_decoder": 0, "local_window_size": 1}
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(self, name)}")

    def earlier_patches(self, module: str) -> Optional[int]:
        """How many patches before the own (encoder) or lagged (decoder) one a cross-attention query sees
        (None: all), from ``cross_attn_window_{module}``."""
        window = getattr(self, f"cross_attn_window_{module}")
        return None if window == 0 else window - 1

    def ffn_size(self, hidden_size: Optional[int] = None) -> int:
        """MLP width for a block of ``hidden_size`` (the global one by default)."""
        hidden = hidden_size or self.hidden_size
        if self.ffn_hidden_size is not None and hidden == self.hidden_size:
            return self.ffn_hidden_size
        if not self.swiglu:
            return 4 * hidden
        return ((8 * hidden // 3) + 63) // 64 * 64

    def with_overrides(self, **overrides) -> "ModelConfig":
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown model fields: {sorted(unknown)}")
        return replace(self, **overrides)


MODEL_FLAVOURS: dict[str, ModelConfig] = {
    "debug": ModelConfig(),
    # The CPU demo: a global model that dominates the local modules, as at real scale (1b: 25 x 2048
    # global vs 10 x 1024 local), so that compute-controlled runs compare what the paper compares.
    "demo": ModelConfig(
        num_layers=4, hidden_size=128, num_attention_heads=4,
        encoder_num_layers=1, encoder_hidden_size=64, encoder_num_attention_heads=4,
        decoder_num_layers=1, decoder_hidden_size=64, decoder_num_attention_heads=4,
        local_window_size=128,
    ),
    # The 1b's layer counts and 2:1 global:local width ratio at CPU widths (head size 64 everywhere):
    # benchmarks compare LST and the baseline at the real model's depth mix without a GPU.
    "1b-mini": ModelConfig(
        num_layers=25, hidden_size=256, num_attention_heads=4,
        encoder_num_layers=1, encoder_hidden_size=128, encoder_num_attention_heads=2,
        decoder_num_layers=9, decoder_hidden_size=128, decoder_num_attention_heads=2,
        local_window_size=512,
    ),
    "420m": ModelConfig(
        num_layers=18, hidden_size=1280, num_attention_heads=10,
        encoder_num_layers=7, encoder_hidden_size=768, encoder_num_attention_heads=12,
        decoder_num_layers=7, decoder_hidden_size=768, decoder_num_attention_heads=12,
    ),
    "1b": ModelConfig(
        num_layers=25, hidden_size=2048, num_attention_heads=16,
        encoder_num_layers=1, encoder_hidden_size=1024, encoder_num_attention_heads=16,
        decoder_num_layers=9, decoder_hidden_size=1024, decoder_num_attention_heads=16,
    ),
    "7b": ModelConfig(
        num_layers=32, hidden_size=4096, num_attention_heads=32, num_query_groups=8,
        encoder_num_layers=1, encoder_hidden_size=1280, encoder_num_attention_heads=16,
        decoder_num_layers=9, decoder_hidden_size=1280, decoder_num_attention_heads=16,
    ),
}


def model_flavour(name: str, **overrides) -> ModelConfig:
    """The named flavour, with optional field overrides."""
    if name not in MODEL_FLAVOURS:
        raise ValueError(f"unknown model flavour {name!r}; known: {sorted(MODEL_FLAVOURS)}")
    return MODEL_FLAVOURS[name].with_overrides(**overrides)
