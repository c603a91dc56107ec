"""The joint tokenizer written beside an exported model, so that ids can be rebuilt without this repository.

Always written: a copy of the text model (``text_tokenizer.model`` or ``.tiktoken``), the unit BPE
(``unit_bpe.model`` and its sidecar, bpe-baseline only) and ``joint_tokenizer.json``, which says where
each kind of token lives (megatron_lst/tokenizer.py's layout) and how a sequence is put together.

For a SentencePiece text model, also ``tokenizer.json`` + ``tokenizer_config.json``, which
``transformers.AutoTokenizer`` loads: the text model converted with the ``tokenizers`` library (same
ids as SentencePiece, tested), followed by the specials and one token per speech slot at their joint
ids (``<|bos|>`` ... ``<|unit_0|>`` ...). Text encodes as in our pipeline; speech units must still come
from a unit extractor (``tools/extract_units.py``), and a bpe-baseline's units through its unit BPE.
A tiktoken text model gets no ``tokenizer.json`` (only our files).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from megatron_lst.data.unit_bpe import sidecar_path
from megatron_lst.tokenizer import JointTokenizer, SentencePieceText
from megatron_lst.unit_bpe_tokenizer import UnitBPETokenizer

LAYOUT_FILE = "joint_tokenizer.json"
TEXT_MODEL_STEM = "text_tokenizer"
UNIT_BPE_FILE = "unit_bpe.model"
SPECIAL_NAMES = ("<|bos|>", "<|eos|>", "<|pad|>", "<|text|>", "<|speech|>")  # at text_vocab_size + 0 .. 4


def speech_token_names(tokenizer: JointTokenizer) -> list[str]:
    """One name per speech slot, in id order: raw units (and spare slots), or unit BPE pieces."""
    layout = tokenizer.vocab
    if isinstance(tokenizer, UnitBPETokenizer):
        return [f"<|unit_piece_{i}|>" for i in range(layout.num_units)]
    return ([f"<|unit_{i}|>" for i in range(layout.num_units)]
            + [f"<|unit_spare_{i}|>" for i in range(layout.spare_units)])


def layout_description(tokenizer: JointTokenizer, files: dict) -> dict:
    """``joint_tokenizer.json``: the id layout, the files, and the sequence conventions."""
    layout = tokenizer.vocab
    return {
        "layout": tokenizer.layout(),
        "files": files,
        "ids": {"text": [0, layout.text_vocab_size], "bos": layout.bos_id, "eos": layout.eos_id, "pad": layout.pad_id,
                "text_marker": layout.text_marker_id, "speech_marker": layout.speech_marker_id,
                "speech": [layout.unit_offset, layout.vocab_size], "vocab_size": layout.vocab_size},
        "speech_ids": ("unit BPE piece p -> unit_offset + p (pieces from unit_bpe.model over the data's "
                       f"{tokenizer.data_num_units}-unit codebook)" if isinstance(tokenizer, UnitBPETokenizer)
                       else "unit u (0 <= u < num_units + spare_units) -> unit_offset + u"),
        "sequence": "documents start with bos; each modality span starts with its marker (<|text|> before text ids, "
                    "<|speech|> before speech ids) and a document ends with eos (docs/method.md section 2)",
        "special_token_names": list(SPECIAL_NAMES),
        "speech_token_names": f"{speech_token_names(tokenizer)[0]} .. (one per speech id, in order)",
    }


def hf_tokenizer(tokenizer: JointTokenizer):
    """A ``tokenizers.Tokenizer`` of the joint vocabulary, or None (no transformers, or a tiktoken text model).

    The text part is SentencePiece's own model converted by transformers' SentencePiece reader, in its
    legacy mode (every text chunk gets SentencePiece's dummy prefix, as ``encode`` does)."""
    if not isinstance(tokenizer.text_model, SentencePieceText):
        return None
    try:
        from tokenizers import AddedToken
        from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf
    except ImportError:
        return None
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(Path(tokenizer.text_model.model_path).read_bytes())
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    converted = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    if converted is None:
        return None
    names = [*SPECIAL_NAMES, *speech_token_names(tokenizer)]
    clashes = [name for name in names if name in vocab]
    if clashes:
        raise ValueError(f"the text model already has pieces named {clashes[:3]}: cannot name the joint specials")
    converted.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in names])
    if converted.token_to_id(names[-1]) != tokenizer.vocab_size - 1 or converted.get_vocab_size() != tokenizer.vocab_size:
        raise ValueError("the converted tokenizer does not number the specials at the joint ids")
    return converted


def write_tokenizer_files(tokenizer: JointTokenizer, folder: Path, max_length: int) -> dict:
    """Write the tokenizer into ``folder``; returns what was written (recorded in the export's metadata)."""
    text_source = Path(tokenizer.text_model.model_path)
    text_file = TEXT_MODEL_STEM + (".tiktoken" if text_source.suffix == ".tiktoken" else ".model")
    shutil.copyfile(text_source, folder / text_file)
    files = {"text_model": text_file}
    if isinstance(tokenizer, UnitBPETokenizer):
        shutil.copyfile(tokenizer.unit_bpe.model_path, folder / UNIT_BPE_FILE)
        if sidecar_path(tokenizer.unit_bpe.model_path).is_file():
            shutil.copyfile(sidecar_path(tokenizer.unit_bpe.model_path), sidecar_path(folder / UNIT_BPE_FILE))
        files["unit_bpe"] = UNIT_BPE_FILE
    converted = hf_tokenizer(tokenizer)
    if converted is not None:
        converted.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL_NAMES[0], "eos_token": SPECIAL_NAMES[1],
            "pad_token": SPECIAL_NAMES[2], "unk_token": tokenizer.text_model.processor.id_to_piece(
                tokenizer.text_model.processor.unk_id()),
            "add_bos_token": False, "add_eos_token": False, "model_max_length": int(max_length),
            "clean_up_tokenization_spaces": False}, indent=1))
        files["hf_tokenizer"] = "tokenizer.json"
    (folder / LAYOUT_FILE).write_text(json.dumps(layout_description(tokenizer, files), indent=1))
    return files


def tokenizer_paths(folder: Path) -> tuple[Optional[Path], Optional[Path]]:
    """(text model, unit BPE) copies inside an exported folder, None where it has none."""
    layout_file = Path(folder) / LAYOUT_FILE
    if not layout_file.is_file():
        return None, None
    files = json.loads(layout_file.read_text()).get("files", {})
    text, bpe = files.get("text_model"), files.get("unit_bpe")
    return (Path(folder) / text if text else None), (Path(folder) / bpe if bpe else None)
