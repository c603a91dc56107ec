"""The BPE SpeechLLM baseline (``--model bpe-baseline``): speech spans as unit BPE pieces, end to end.

A tiny BPE worked by hand shows the training batches really hold pieces; a real run on a small
speech-text corpus trains, saves and is scored by tools/evaluate.py with the same BPE; a checkpoint
meeting another BPE or codebook is refused naming the field.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, child_env, run_pretrain
from tests.models.test_lst_training import speech_text_prefix  # noqa: F401  (module fixture)


def run_tool(name: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / name), *args], env=child_env(),
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# ---------------------------------------------------------------- a BPE worked by hand
HAND_SEQUENCES = [[1, 2, 1, 2, 3, 4]] * 50 + [[4, 3, 1, 2]] * 30


@pytest.fixture(scope="module")
def hand_bpe(tmp_path_factory) -> str:
    """8 pieces: <unk>, [1 2], [3 4], [1 2 1 2], then the single units 1, 2, 3, 4 (checked below)."""
    from megatron_lst.data.unit_bpe import train_unit_bpe

    return str(train_unit_bpe(HAND_SEQUENCES, tmp_path_factory.mktemp("hand_bpe") / "units", 8, num_units=5))


PIECES = {"<unk>": 0, (1, 2): 1, (3, 4): 2, (1, 2, 1, 2): 3, (1,): 4, (2,): 5, (3,): 6, (4,): 7}


def test_the_hand_bpe_has_the_pieces_the_tests_assume(hand_bpe):
    from megatron_lst.data.unit_bpe import UnitBPE

    bpe = UnitBPE(hand_bpe)
    for units, piece in PIECES.items():
        if units != "<unk>":
            assert bpe.decode([piece]).tolist() == list(units)
    assert bpe.num_units == 5 and bpe.vocab_size == 8


def bpe_config(args: list[str]):
    from megatron_lst.training.arguments import parse_args

    return parse_args(args)


def test_speech_spans_are_bpe_pieces_in_the_training_batch(hand_bpe, text_corpus, tmp_path):
    """Segments [1 2 1 2] (word) | [3] (silence) | [1 2] (word) | [4] (word), speech-only streams:
    BOS <s> piece(1212) piece(3) piece(12) piece(4) EOS, each segment encoded on its own."""
    from megatron_lst.training.bpe_baseline_task import BPEBaselineTask

    record = {"units": [1, 2, 1, 2, 3, 1, 2, 4],
              "words": [{"text": "karen", "start": 0, "end": 4}, {"text": "sings", "start": 5, "end": 7},
                        {"text": "today", "start": 7, "end": 8}]}
    source = tmp_path / "hand.jsonl"
    source.write_text((json.dumps(record) + "\n") * 6)
    run_tool("preprocess_data.py", ["--input", str(source), "--output-prefix", str(tmp_path / "hand"),
                                    "--tokenizer-model", str(text_corpus.tokenizer_model), "--num-units", "5",
                                    "--quiet"])
    config = bpe_config(["--model", "bpe-baseline", "--unit-bpe", hand_bpe, "--num-units", "5",
                         "--tokenizer-model", str(text_corpus.tokenizer_model), "--data-mode", "speech",
                         "--data-path", str(tmp_path / "hand_speech_document"), "--split", "100,0,0",
                         "--seq-length", "6", "--micro-batch-size", "1", "--global-batch-size", "1"])
    task = BPEBaselineTask(config)
    data = task.build_datasets(config, 2, 0)
    batch = data.collate([data.train[0]])
    tok = task.tokenizer
    pieces = [PIECES[(1, 2, 1, 2)], PIECES[(3,)], PIECES[(1, 2)], PIECES[(4,)]]
    expected = [tok.bos_id, tok.speech_marker_id, *(tok.unit_offset + p for p in pieces), tok.eos_id]
    assert tok.vocab.num_units == 8 and tok.vocab.spare_units == 0
    assert batch["tokens"][0].tolist() == expected[:-1]
    assert batch["labels"][0].tolist() == expected[1:]
    assert batch["is_speech"][0].tolist() == [False, True, True, True, True, False]


def test_a_corpus_of_another_codebook_is_refused_at_training_start(hand_bpe, text_corpus, speech_text_prefix):  # noqa: F811
    """The random corpus has 501 units; the hand BPE was trained on 5."""
    from megatron_lst.training.bpe_baseline_task import BPEBaselineTask

    base = ["--model", "bpe-baseline", "--unit-bpe", hand_bpe, "--tokenizer-model", str(text_corpus.tokenizer_model),
            "--data-path", speech_text_prefix]
    with pytest.raises(ValueError, match=r"--num-units 501 but the unit BPE .* num_units = 5"):
        BPEBaselineTask(bpe_config(base))
    task = BPEBaselineTask(bpe_config([*base, "--num-units", "5"]))
    with pytest.raises(ValueError, match=r"sp_speech_document\.json: num_units = 501 but the run has --num-units 5"):
        task.build_datasets(task.config, 2, 1)


def test_unit_bpe_flag_and_model_go_together():
    with pytest.raises(SystemExit):
        bpe_config(["--model", "bpe-baseline"])
    with pytest.raises(SystemExit):
        bpe_config(["--model", "baseline", "--unit-bpe", "x.model"])


# ---------------------------------------------------------------- evaluation encodes with the BPE
class RecordingScorer:
    """Log-prob -1 per token; remembers the sequences it was asked about."""

    def __init__(self):
        self.sequences: list[np.ndarray] = []

    def token_logprobs(self, sequences):
        self.sequences.extend(np.asarray(s) for s in sequences)
        return [-np.ones(len(s) - 1) for s in sequences]


def test_the_evaluator_scores_speech_items_as_bpe_pieces(hand_bpe, text_corpus):
    from megatron_lst.evaluation.items import Item, Part
    from megatron_lst.evaluation.scoring import DIRECTIONS, SequenceBuilder, score_direction
    from megatron_lst.unit_bpe_tokenizer import UnitBPETokenizer

    tok = UnitBPETokenizer.from_files(text_corpus.tokenizer_model, hand_bpe, data_num_units=5)
    item = Item("a", 0, Part(units=(1, 2, 1, 2, 3, 4)), (Part(units=(1, 2)), Part(units=(4, 3, 2))))
    scorer = RecordingScorer()
    result = score_direction([item], DIRECTIONS["ss"], SequenceBuilder(tok), scorer)
    head = [tok.bos_id, tok.speech_marker_id, tok.unit_offset + 3, tok.unit_offset + 2]
    assert scorer.sequences[0].tolist() == head + [tok.unit_offset + 1]
    assert scorer.sequences[1].tolist() == head + [tok.unit_offset + p for p in (7, 6, 5)]
    assert result.per_item[0]["scores"]["sum"] == [-1.0, -3.0]  # ending lengths in pieces, not units
    with pytest.raises(ValueError, match="outside the codebook"):
        tok.encode_units([5])


def test_a_checkpoint_layout_of_another_bpe_is_refused_naming_the_field(hand_bpe, text_corpus, tmp_path):
    from megatron_lst.data.unit_bpe import train_unit_bpe
    from megatron_lst.unit_bpe_tokenizer import UnitBPETokenizer, check_saved_layout

    trained = UnitBPETokenizer.from_files(text_corpus.tokenizer_model, hand_bpe, data_num_units=5)
    saved = trained.layout()
    check_saved_layout(saved, trained, "ckpt")  # the same BPE passes
    other_bpe = train_unit_bpe(HAND_SEQUENCES[::-1] + [[4, 4, 4]] * 40, tmp_path / "other", 8, num_units=5)
    other = UnitBPETokenizer.from_files(text_corpus.tokenizer_model, other_bpe, data_num_units=5)
    with pytest.raises(ValueError, match=rf"unit_bpe.sha256: checkpoint '{saved['unit_bpe']['sha256']}', this run"):
        check_saved_layout(saved, other, "ckpt")
    wider = UnitBPETokenizer.from_files(text_corpus.tokenizer_model, hand_bpe, data_num_units=7)
    with pytest.raises(ValueError, match="data_num_units: checkpoint 5, this run 7"):
        check_saved_layout(saved, wider, "ckpt")
    from megatron_lst.tokenizer import JointTokenizer

    with pytest.raises(ValueError, match="trained with the unit BPE .* gives it raw unit ids"):
        check_saved_layout(saved, JointTokenizer.from_file(text_corpus.tokenizer_model), "ckpt")


def test_generation_refuses_a_bpe_baseline_and_the_bpe_defaults_to_the_papers_1k():
    from megatron_lst.data.unit_bpe import DEFAULT_UNIT_BPE_VOCAB
    from megatron_lst.inference.loading import refuse_non_generating

    with pytest.raises(ValueError, match="generation does not support --model bpe-baseline"):
        refuse_non_generating("bpe-baseline", "ckpt")
    refuse_non_generating("baseline", "ckpt")
    assert DEFAULT_UNIT_BPE_VOCAB == 1000
    assert "default 1000" in run_tool("train_unit_bpe.py", ["--help"]).stdout


# ---------------------------------------------------------------- end to end
def test_bpe_baseline_trains_saves_and_is_scored_with_its_bpe(base_args, speech_text_prefix, tmp_path):  # noqa: F811
    """train_unit_bpe.py -> pretrain_lst.py --model bpe-baseline (2 steps, saves) -> evaluate.py, whose
    S->S scores equal scoring the BPE-encoded ids directly; a resume or evaluation with another BPE
    is refused naming the BPE's hash."""
    records = Path(speech_text_prefix).parent / "speech.jsonl"
    run_tool("train_unit_bpe.py", ["--input", str(records), "--output-prefix", str(tmp_path / "bpe"),
                                   "--vocab-size", "600"])
    run_tool("train_unit_bpe.py", ["--input", str(records), "--output-prefix", str(tmp_path / "other"),
                                   "--vocab-size", "560"])
    from megatron_lst.evaluation.model_scorer import CheckpointScorer
    from megatron_lst.training.checkpoint_loading import read_common_state

    assert json.loads((tmp_path / "bpe.json").read_text())["num_units"] == 501  # the codebook travels with it
    save = tmp_path / "ckpt"
    text_prefix = base_args[base_args.index("--data-path") + 1]
    args = [*base_args, "--model", "bpe-baseline", "--data-path", "0.5", speech_text_prefix, "0.5", text_prefix,
            "--train-iters", "2"]
    run_pretrain([*args, "--unit-bpe", str(tmp_path / "bpe.model"), "--save", str(save)])
    layout = json.loads(read_common_state(save)["vocab_layout"])  # written as JSON
    assert layout["unit_bpe"]["pieces"] == 600 and layout["data_num_units"] == 501 and layout["num_units"] == 600

    units = [json.loads(line)["units"] for line in records.read_text().splitlines()[:3]]
    item = {"id": "x", "label": 0, "prompt": {"units": units[0][:40]},
            "endings": [{"units": units[1][:12]}, {"units": units[2][:12]}]}
    benchmark = tmp_path / "bench.jsonl"
    benchmark.write_text(json.dumps(item) + "\n")
    run_tool("evaluate.py", ["--checkpoint", str(save), "--benchmark", str(benchmark), "--directions", "ss",
                             "--output", str(tmp_path / "out.json")])
    scores = json.loads((tmp_path / "out.json").read_text())["results"]["S->S"]["items"][0]["scores"]["sum"]

    from megatron_lst.training.initialize import destroy_distributed

    scorer = CheckpointScorer.from_checkpoint(save)
    try:
        tok = scorer.tokenizer
        prompt = tok.unit_offset + tok.unit_bpe.encode(item["prompt"]["units"])
        for ending, expected in zip(item["endings"], scores):
            pieces = tok.unit_offset + tok.unit_bpe.encode(ending["units"])
            # piece ids that spell the units, not the raw unit ids (random units barely compress)
            assert tok.unit_bpe.decode(pieces - tok.unit_offset).tolist() == ending["units"]
            assert (pieces - tok.unit_offset).tolist() != ending["units"]
            sequence = np.concatenate([[tok.bos_id, tok.speech_marker_id], prompt, pieces])
            direct = scorer.token_logprobs([sequence])[0][-len(pieces):].sum()
            assert direct == pytest.approx(expected, rel=1e-5, abs=1e-5)
    finally:
        destroy_distributed()

    refused = run_tool("evaluate.py", ["--checkpoint", str(save), "--benchmark", str(benchmark), "--directions",
                                       "ss", "--unit-bpe", str(tmp_path / "other.model")], check=False)
    assert refused.returncode == 2 and "unit_bpe.sha256: checkpoint" in refused.stderr, refused.stderr[-2000:]
    resumed = run_pretrain([*args, "--unit-bpe", str(tmp_path / "other.model"), "--load", str(save),
                            "--train-iters", "3"], check=False)
    assert resumed.returncode != 0
    assert "unit_bpe.sha256: checkpoint" in resumed.stderr and "unit_bpe.pieces: checkpoint 600, this run 560" \
        in resumed.stderr, resumed.stderr[-3000:]
