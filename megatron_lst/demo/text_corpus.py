"""A small real text corpus as a Megatron GPT indexed dataset, built offline in seconds.

Used by the tests and the demo: Lee news stories from the gensim wheel (``text_source``), a
SentencePiece model trained on them, and ``tools/preprocess_data.py`` to tokenise them into
``{prefix}_text_document.bin/.idx``. The result is cached by the source fingerprint and settings.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from megatron_lst.demo.text_source import iter_documents, source_fingerprint
from megatron_lst.tokenizer import train_sentencepiece

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TextCorpus:
    tokenizer_model: Path
    data_prefix: str  # what --data-path takes
    num_documents: int


def build_text_corpus(
    out_dir: str | Path, source: str = "lee_background", vocab_size: int = 2000
) -> TextCorpus:
    """Build (or reuse) the corpus under ``out_dir``; returns the tokenizer and dataset prefix."""
    out_dir = Path(out_dir)
    key = hashlib.sha256(f"{source_fingerprint([source])}|{vocab_size}|v1".encode()).hexdigest()[:12]
    folder = out_dir / f"{source}-{key}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        return TextCorpus(Path(saved["tokenizer_model"]), saved["data_prefix"], saved["num_documents"])
    folder.mkdir(parents=True, exist_ok=True)
    documents = list(iter_documents(source))
    texts = [" ".join(doc.sentences) for doc in documents]
    tokenizer_model = train_sentencepiece(texts, folder / "text_bpe", vocab_size=vocab_size)
    jsonl = folder / "documents.jsonl"
    jsonl.write_text("".join(json.dumps({"id": d.id, "text": t}) + "\n" for d, t in zip(documents, texts)))
    prefix = folder / "corpus"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "preprocess_data.py"), "--input", str(jsonl),
         "--output-prefix", str(prefix), "--tokenizer-model", str(tokenizer_model), "--append-eod", "--quiet"],
        check=True,
    )
    corpus = TextCorpus(tokenizer_model, f"{prefix}_text_document", len(documents))
    manifest.write_text(json.dumps({"tokenizer_model": str(tokenizer_model), "data_prefix": corpus.data_prefix,
                                    "num_documents": corpus.num_documents}))
    return corpus
