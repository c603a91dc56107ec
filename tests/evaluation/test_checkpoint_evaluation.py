"""A real (two-iteration) baseline checkpoint saved at TP=2, scored at TP=1 in-process and by the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from megatron_lst.evaluation.items import Item, Part, write_items
from tests.conftest import REPO_ROOT, child_env, run_pretrain


@pytest.fixture(scope="module")
def tp2_checkpoint(text_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_ckpt")
    run_pretrain([
        "--model-flavour", "debug", "--model", "baseline",
        "--data-path", text_corpus.data_prefix, "--tokenizer-model", str(text_corpus.tokenizer_model),
        "--data-cache-path", str(folder / "index_cache"), "--seq-length", "64",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-3", "--lr-warmup-iters", "2",
        "--eval-interval", "1000", "--eval-iters", "1", "--seed", "7", "--train-iters", "2",
        "--tensor-model-parallel-size", "2", "--save", str(folder / "ckpt"),
    ], nproc=2)
    return folder / "ckpt"


@pytest.fixture(scope="module")
def scorer(tp2_checkpoint):
    from megatron_lst.evaluation.model_scorer import CheckpointScorer
    from megatron_lst.training.initialize import destroy_distributed

    yield CheckpointScorer.from_checkpoint(tp2_checkpoint)
    destroy_distributed()


def test_checkpoint_config_is_read_back_at_tp1(tp2_checkpoint, text_corpus):
    from megatron_lst.training.checkpoint_loading import config_from_checkpoint

    config = config_from_checkpoint(tp2_checkpoint)
    assert config.train.model == "baseline" and config.parallel.tensor_model_parallel_size == 1
    assert config.data.seq_length == 64 and config.data.tokenizer_model == str(text_corpus.tokenizer_model)


def test_log_probs_are_normalised_and_independent_of_batch_padding(scorer):
    rng = np.random.default_rng(0)
    tokenizer = scorer.tokenizer
    sequences = [np.concatenate([[tokenizer.bos_id, tokenizer.text_marker_id],
                                 rng.integers(0, tokenizer.vocab.text_vocab_size, size=n)]) for n in (5, 17, 9)]
    together = scorer.token_logprobs(sequences)
    alone = [scorer.token_logprobs([sequence])[0] for sequence in sequences]
    for sequence, batched, single in zip(sequences, together, alone):
        assert batched.shape == (len(sequence) - 1,) and np.all(batched < 0)
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)
    # the model's own training loss uses the padded vocabulary: slicing it can only raise a log-prob
    tokens = torch.as_tensor(sequences[1][None, :-1])
    labels = torch.as_tensor(sequences[1][None, 1:])
    positions = torch.arange(tokens.shape[1])[None]
    with torch.no_grad():
        loss = scorer.model(tokens, positions, None, labels=labels)[0].numpy()
    assert np.all(together[1] >= -loss - 1e-5)


def test_cli_scores_text_only_benchmark_and_names_skipped_directions(tp2_checkpoint, tmp_path):
    items = [Item(f"i{i}", i % 2, Part(text="The cat sat on the mat."),
                  (Part(text="It purred."), Part(text="Markets closed lower today."))) for i in range(3)]
    write_items(tmp_path / "bench.jsonl", items)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "evaluate.py"), "--checkpoint", str(tp2_checkpoint),
         "--benchmark", str(tmp_path / "bench.jsonl"), "--batch-size", "4", "--output", str(tmp_path / "r.json")],
        env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "S->S skipped: no units in the benchmark's prompts" in result.stdout
    assert "T->S skipped: no units in the benchmark's endings" in result.stdout
    saved = json.loads((tmp_path / "r.json").read_text())
    assert list(saved["results"]) == ["T->T"]
    accuracy = saved["results"]["T->T"]["accuracy"]
    assert set(accuracy) == {"sum", "mean", "seq_nll"} and accuracy["sum"]["total"] == 3
    # identical items: one prediction for all, so labels 0,1,0 give 1/3 or 2/3
    assert accuracy["sum"]["correct"] in (1, 2)
    assert saved["results"]["T->T"]["scored"] == 3 and saved["length_unit"] == "tokens"
    assert "prompt cache" in result.stderr
    # lm-eval-harness's shape beside ours
    lm_eval = json.loads((tmp_path / "r.lm_eval.json").read_text())["results"]["bench_t2t"]
    assert lm_eval["acc,none"] == accuracy["sum"]["accuracy"]
    assert {"acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"} <= set(lm_eval)


@pytest.mark.slow  # two more CLI runs on the checkpoint (~40 s); test_prompt_cache.py covers the equality fast
def test_cli_reads_a_storycloze_csv_and_whole_sequence_scores_equal_cached(tp2_checkpoint, tmp_path):
    (tmp_path / "val.csv").write_text(
        "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,RandomFifthSentenceQuiz1,"
        "RandomFifthSentenceQuiz2,AnswerRightEnding\n"
        "s1,The cat sat.,It was warm.,The sun shone.,A bird sang.,The cat slept.,Markets fell.,1\n"
        "s2,Ann baked.,She was tired.,The oven hummed.,Bread rose.,She ate bread.,Rain is wet.,1\n")
    outputs = {}
    for mode in ([], ["--no-prompt-cache"]):
        output = tmp_path / f"r{len(mode)}.json"
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "tools" / "evaluate.py"), "--checkpoint", str(tp2_checkpoint),
             "--benchmark", str(tmp_path / "val.csv"), "--format", "storycloze-csv", "--output", str(output), *mode],
            env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[len(mode)] = json.loads(output.read_text())["results"]["T->T"]["items"]
        assert "storycloze_t2t" in json.loads(output.with_suffix(".lm_eval.json").read_text())["results"]
    for cached, whole in zip(outputs[0], outputs[1], strict=True):
        np.testing.assert_allclose(cached["scores"]["sum"], whole["scores"]["sum"], atol=1e-5, rtol=1e-5)


def test_a_tokenizer_of_another_size_is_refused(tp2_checkpoint, tmp_path):
    from megatron_lst.training.checkpoint_loading import check_vocabulary, read_common_state
    from megatron_lst.tokenizer import JointTokenizer, train_sentencepiece

    other = train_sentencepiece([f"line {i} of other text" for i in range(50)], tmp_path / "other", vocab_size=40)
    with pytest.raises(ValueError, match="text_vocab_size"):
        check_vocabulary(read_common_state(tp2_checkpoint), JointTokenizer.from_file(other))


def test_a_tokenizer_of_the_same_size_but_other_pieces_is_refused(tp2_checkpoint, text_corpus, tmp_path):
    """Same size passes the layout check; the pieces' fingerprint saved with the run does not."""
    import random

    from megatron_lst.training.checkpoint_loading import check_text_model, check_vocabulary, read_common_state
    from megatron_lst.tokenizer import JointTokenizer, train_sentencepiece

    common = read_common_state(tp2_checkpoint)
    size = JointTokenizer.from_file(text_corpus.tokenizer_model).vocab.text_vocab_size
    rng = random.Random(99)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lines = [" ".join("".join(rng.choices(letters, k=rng.randint(2, 7))) for _ in range(12)) for _ in range(3000)]
    other = JointTokenizer.from_file(train_sentencepiece(lines, tmp_path / "other", vocab_size=size))
    assert other.vocab.text_vocab_size == size
    with pytest.raises(ValueError, match="pieces_sha256"):
        check_vocabulary(common, other)
    check_vocabulary(common, JointTokenizer.from_file(text_corpus.tokenizer_model))  # the run's own: fine
    saved = json.loads(common["vocab_layout"])["text_model"]  # written as JSON
    old = {key: value for key, value in saved.items() if key != "pieces_sha256"}  # an older checkpoint
    check_text_model(old, other)  # cannot tell: warns instead


def test_a_checkpoint_of_another_shape_names_the_tensor_and_both_shapes(tp2_checkpoint):
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from megatron_lst.training.checkpoint_loading import check_checkpoint_shapes, checkpoint_iteration_dir

    folder = checkpoint_iteration_dir(tp2_checkpoint)
    key, stored = next((k, v) for k, v in dist_checkpointing.load_tensors_metadata(str(folder)).items()
                       if isinstance(v, ShardedTensor) and len(v.global_shape) == 2)
    wrong = (stored.global_shape[0] + 8, stored.global_shape[1])

    class OtherModel:
        def sharded_state_dict(self):
            return {"weight": ShardedTensor.from_rank_offsets(key, torch.empty(wrong))}

    expected = rf"{key}: checkpoint shape \({stored.global_shape[0]}, {stored.global_shape[1]}\), model shape \({wrong[0]}, {wrong[1]}\)"
    with pytest.raises(ValueError, match=expected):
        check_checkpoint_shapes(folder, OtherModel())


def test_cli_scores_several_benchmarks_with_one_load_as_separate_calls_do(tp2_checkpoint, tmp_path):
    """--benchmark a b --output-dir d writes d/a.json and d/b.json (and their lm-eval files), each
    equal to the result of scoring that benchmark alone; b's items have no prompt, so its endings
    are scored as whole sequences, a's through the prompt cache."""
    stories = [Item(f"s{i}", i % 2, Part(text="The cat sat on the mat."),
                    (Part(text="It purred."), Part(text="Markets closed lower today."))) for i in range(2)]
    other = [Item(f"o{i}", 1, Part(text=""), (Part(text="Bread rose."), Part(text="The streets were wet.")))
             for i in range(2)]
    write_items(tmp_path / "stories.jsonl", stories)
    write_items(tmp_path / "other.jsonl", other)

    def evaluate(*flags: str) -> str:
        result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "evaluate.py"), "--checkpoint",
                                 str(tp2_checkpoint), "--directions", "tt", *flags],
                                env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr

    notes = evaluate("--benchmark", str(tmp_path / "stories.jsonl"), str(tmp_path / "other.jsonl"),
                     "--output-dir", str(tmp_path / "both"))
    assert f"{tmp_path / 'other.jsonl'}: no item has a prompt" in notes
    assert "stories.jsonl: no item" not in notes
    evaluate("--benchmark", str(tmp_path / "other.jsonl"), "--output", str(tmp_path / "alone.json"))
    alone = json.loads((tmp_path / "alone.json").read_text())
    together = json.loads((tmp_path / "both" / "other.json").read_text())
    assert together["results"] == alone["results"] and together["benchmark"] == str(tmp_path / "other.jsonl")
    stories_result = json.loads((tmp_path / "both" / "stories.json").read_text())["results"]["T->T"]
    assert stories_result["scored"] == 2 and [item["id"] for item in stories_result["items"]] == ["s0", "s1"]
    assert "other_t2t" in json.loads((tmp_path / "both" / "other.lm_eval.json").read_text())["results"]
