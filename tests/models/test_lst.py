"""LSTModel in one process: causality over random patchings, patch-size-1 and degenerate shapes,
and the FLOPs split of static patching."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
import torch

from megatron_lst.models.config import model_flavour
from megatron_lst.models.flops import gpt_training_flops, lst_training_flops
from megatron_lst.models.lst import LSTModel, lst_transformer_configs
from megatron_lst.patching import PatchingConfig, compute_patches
from megatron_lst.tokenizer import VocabLayout

LAYOUT = VocabLayout(text_vocab_size=40, num_units=12, spare_units=1)
VOCAB = 128  # padded joint vocabulary (LAYOUT.vocab_size rounded up)


@pytest.fixture(scope="module")
def model_parallel(single_rank_parallel_state):
    """megatron's one-rank parallel state (tests/conftest.py)."""
    yield


def build_model(**overrides) -> LSTModel:
    shape = model_flavour("debug", local_window_size=6, **overrides)
    global_config, encoder_config, decoder_config = lst_transformer_configs(shape)
    model = LSTModel(shape, global_config, encoder_config, decoder_config, vocab_size=VOCAB)
    return model.eval()


def random_sample(rng: np.random.Generator, length: int, two_documents: bool = False,
                  document_starts: Optional[list[int]] = None) -> dict:
    """BOS, then alternating text blocks and <s> speech spans of aligned segments, up to ``length``.

    A new document (opened with BOS) starts at the first block boundary at or after each of
    ``document_starts`` (default: past the middle when ``two_documents``, else none).
    """
    columns = {name: [] for name in ("tokens", "is_speech", "segment_ids", "is_silence", "document_ids")}
    segment, document = 0, 0
    if document_starts is None:
        document_starts = [length // 2 + 1] if two_documents else []
    pending = list(document_starts)

    def push(token, speech=False, seg=-1, silence=False):
        for name, value in zip(columns, (token, speech, seg, silence, document)):
            columns[name].append(value)

    push(LAYOUT.bos_id)
    while len(columns["tokens"]) < length:
        if pending and len(columns["tokens"]) >= pending[0]:
            pending.pop(0)
            document += 1
            push(LAYOUT.bos_id)
        if rng.random() < 0.4:
            push(LAYOUT.text_marker_id)
            for _ in range(rng.integers(1, 4)):
                push(int(rng.integers(0, LAYOUT.text_vocab_size)))
        else:
            push(LAYOUT.speech_marker_id)
            for _ in range(rng.integers(1, 4)):
                silence = bool(rng.random() < 0.2)
                for _ in range(rng.integers(1, 7)):
                    push(LAYOUT.unit_offset + int(rng.integers(0, LAYOUT.num_units)), True, segment, silence)
                segment += 1
    return {name: np.asarray(values[:length]) for name, values in columns.items()}


def training_batch(samples: list[dict], strategy: str = "static", patch_size: int = 4) -> dict:
    """An LST micro-batch as the collate builds it: rows right-padded, patched, each row's padding
    one patch; inputs/targets shifted by one (PAD targets: label 0, loss mask 0)."""
    from megatron_lst.data.sampler import collate_packed
    from megatron_lst.patching.padding import merge_padding_patches

    batch = collate_packed(samples, pad_id=LAYOUT.pad_id)
    patch_lengths = compute_patches(
        batch["tokens"], batch["is_speech"], PatchingConfig(strategy=strategy, patch_size=patch_size), LAYOUT,
        segment_ids=batch["segment_ids"], is_silence=batch["is_silence"], document_ids=batch["document_ids"],
    ).patch_lengths.long()
    tokens = batch["tokens"].long()
    targets = tokens[:, 1:]
    return {
        "inputs": tokens[:, :-1].contiguous(),
        "labels": torch.where(targets == LAYOUT.pad_id, torch.zeros_like(targets), targets),
        "loss_mask": (targets != LAYOUT.pad_id).float(),
        "documents": batch["document_ids"][:, :-1].long().contiguous(),
        "patch_lengths": merge_padding_patches(patch_lengths, batch["num_tokens"]),
    }


def patched_batch(seed: int, config: PatchingConfig, rows: int = 2, length: int = 33, two_documents=False):
    rng = np.random.default_rng(seed)
    samples = [random_sample(rng, length, two_documents) for _ in range(rows)]
    batch = {name: torch.from_numpy(np.stack([s[name] for s in samples])) for name in samples[0]}
    boundaries = compute_patches(
        batch["tokens"], batch["is_speech"], config, LAYOUT, segment_ids=batch["segment_ids"],
        is_silence=batch["is_silence"], document_ids=batch["document_ids"],
    )
    return batch, boundaries.patch_lengths.long()


def other_token(token: int, rng: np.random.Generator) -> int:
    """A different token of the same kind, so patch boundaries stay valid."""
    if token >= LAYOUT.unit_offset:
        return LAYOUT.unit_offset + (token - LAYOUT.unit_offset + 1 + int(rng.integers(0, LAYOUT.num_units - 1))) % LAYOUT.num_units
    if token < LAYOUT.text_vocab_size:
        return (token + 1 + int(rng.integers(0, LAYOUT.text_vocab_size - 1))) % LAYOUT.text_vocab_size
    return token


@pytest.mark.parametrize("strategy,patch_size", [("static", 1), ("static", 4), ("static", 6), ("aligned", 4)])
@pytest.mark.parametrize("two_documents", [False, True])
def test_changing_token_j_never_changes_earlier_logits(model_parallel, strategy, patch_size, two_documents):
    torch.manual_seed(0)
    model = build_model()
    config = PatchingConfig(strategy=strategy, patch_size=patch_size)
    rng = np.random.default_rng(patch_size)
    for seed in range(2):
        batch, patch_lengths = patched_batch(seed, config, two_documents=two_documents)
        inputs = batch["tokens"][:, :-1].long()
        documents = batch["document_ids"][:, :-1].long() if two_documents else None
        with torch.no_grad():
            reference = model(inputs, patch_lengths, document_ids=documents)
        assert torch.isfinite(reference).all()
        for j in rng.choice(np.arange(1, inputs.shape[1]), size=4, replace=False):
            changed = inputs.clone()
            changed[:, j] = torch.tensor([other_token(int(t), rng) for t in inputs[:, j]])
            with torch.no_grad():
                logits = model(changed, patch_lengths, document_ids=documents)
            torch.testing.assert_close(logits[:, :j], reference[:, :j], rtol=0, atol=1e-5)
            if (changed[:, j] != inputs[:, j]).any():
                assert not torch.allclose(logits[:, j:], reference[:, j:]), "token j influences nothing after it"


@pytest.mark.parametrize("widths", [(64, 64), (32, 48)])
def test_loss_and_gradients_are_finite_with_padding_and_k_queries(model_parallel, widths):
    encoder_width, decoder_width = widths
    model = build_model(cross_attn_k=2, encoder_hidden_size=encoder_width, decoder_hidden_size=decoder_width).train()
    batch, patch_lengths = patched_batch(5, PatchingConfig(strategy="static", patch_size=4), rows=3)
    tokens = batch["tokens"].long()
    padded = torch.cat([patch_lengths, torch.zeros(3, 2, dtype=torch.long)], dim=1)  # right-padded slots
    loss = model(tokens[:, :-1], padded, labels=tokens[:, 1:])
    assert loss.shape == (3, tokens.shape[1] - 1)
    loss.mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_bf16_parameters_run_end_to_end(model_parallel):
    shape = model_flavour("debug", local_window_size=6, encoder_hidden_size=32)
    configs = lst_transformer_configs(shape, bf16=True)
    model = LSTModel(shape, *configs, vocab_size=VOCAB)
    # norm scales stay fp32 in megatron-core's torch-norm fallback, as in the global GPT block
    assert {param.dtype for param in model.parameters() if param.dim() > 1} == {torch.bfloat16}
    batch, patch_lengths = patched_batch(2, PatchingConfig(strategy="static", patch_size=4))
    tokens = batch["tokens"].long()
    loss = model(tokens[:, :-1], patch_lengths, labels=tokens[:, 1:])
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()


def test_patch_size_one_gives_one_global_position_per_token(model_parallel):
    batch, patch_lengths = patched_batch(1, PatchingConfig(strategy="static", patch_size=1, fold_speech_marker="never"))
    assert patch_lengths.shape[1] == batch["tokens"].shape[1] and (patch_lengths == 1).all()
    model = build_model()
    with torch.no_grad():
        logits = model(batch["tokens"][:, :-1].long(), patch_lengths)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("field", ["encoder_num_layers", "decoder_num_layers"])
def test_zero_local_layers_is_rejected_pointing_to_the_baseline(field):
    with pytest.raises(ValueError, match="--model baseline"):
        lst_transformer_configs(model_flavour("debug", **{field: 0}))


def test_static_four_on_speech_only_shortens_the_global_sequence_and_its_flops():
    units = LAYOUT.unit_offset + np.arange(256) % LAYOUT.num_units
    tokens = np.concatenate([[LAYOUT.bos_id, LAYOUT.speech_marker_id], units])[None]
    is_speech = tokens >= LAYOUT.unit_offset
    unfolded = {"fold_speech_marker": "never"}
    by_four = compute_patches(tokens, is_speech, PatchingConfig(strategy="static", patch_size=4, **unfolded), LAYOUT)
    by_one = compute_patches(tokens, is_speech, PatchingConfig(strategy="static", patch_size=1, **unfolded), LAYOUT)
    patches_four, patches_one = int(by_four.num_patches[0]), int(by_one.num_patches[0])
    assert patches_one == tokens.shape[1] and patches_four == 2 + 256 // 4
    shape = model_flavour("debug")
    n = tokens.shape[1] - 1
    four = lst_training_flops(shape, 1, n, patches_four, VOCAB)
    one = lst_training_flops(shape, 1, n, patches_one, VOCAB)
    assert four["global"] < one["global"] / 3.5  # 4x fewer positions, and attention over fewer keys
    assert four["encoder"] < one["encoder"] and four["decoder"] < one["decoder"]
    assert four["total"] == pytest.approx(four["encoder"] + four["global"] + four["decoder"])
    baseline = gpt_training_flops(n, n, shape.num_layers, shape.hidden_size, shape.ffn_size(),
                                  shape.num_attention_heads, VOCAB)
    assert four["global"] < baseline / 3.5


def test_packed_document_pieces_are_opened_with_bos():
    from megatron_lst.training.lst_task import open_documents_with_bos

    unit = LAYOUT.unit_offset
    sample = {"tokens": np.array([unit, unit + 1, LAYOUT.eos_id, LAYOUT.bos_id, 3, unit, unit]),
              "is_speech": np.array([1, 1, 0, 0, 0, 1, 1], bool), "segment_ids": np.array([0, 0, -1, -1, -1, 1, 1]),
              "is_silence": np.zeros(7, bool), "document_ids": np.array([0, 0, 0, 1, 1, 2, 2])}
    opened = open_documents_with_bos(sample, LAYOUT.bos_id)
    assert opened["tokens"].tolist() == [LAYOUT.bos_id, unit, unit + 1, LAYOUT.eos_id, LAYOUT.bos_id, 3,
                                         LAYOUT.bos_id, unit, unit]
    assert opened["document_ids"].tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2]
    assert opened["is_speech"].tolist() == [False, True, True, False, False, False, False, True, True]
    compute_patches(opened["tokens"], opened["is_speech"], PatchingConfig(), LAYOUT,
                    segment_ids=opened["segment_ids"], document_ids=opened["document_ids"])


def test_patching_flags_become_a_patching_config_with_curriculum_in_steps():
    from megatron_lst.training.arguments import parse_args

    config = parse_args(["--model", "lst", "--train-iters", "200", "--patching", "curriculum",
                         "--curriculum-tau1", "0.25", "--curriculum-tau2", "150", "--patch-size", "6",
                         "--silence-mode", "sil_merged", "--max-patch-length", "8", "--fold-speech-marker", "always"])
    patching = config.patching.to_patching_config(config.train.train_iters, config.data.seed)
    assert (patching.strategy, patching.patch_size, patching.silence_mode) == ("curriculum", 6, "sil_merged")
    assert (patching.tau1, patching.tau2, patching.max_patch_length, patching.fold_speech_marker) == (50, 150, 8, "always")


def test_zero_local_layers_is_a_flag_error_pointing_to_the_baseline(capsys):
    from megatron_lst.training.arguments import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--model", "lst", "--decoder-num-layers", "0"])
    assert "--model baseline" in capsys.readouterr().err


@pytest.mark.parametrize("two_documents", [False, True])
def test_padding_as_one_patch_changes_no_real_logit(model_parallel, two_documents):
    """Rows right-padded with PAD (one patch per PAD from the kernel) give the same real-token logits
    when their padding is one patch (training/lst_task.py), with far fewer global positions."""
    from megatron_lst.data.sampler import collate_packed
    from megatron_lst.patching.padding import merge_padding_patches

    torch.manual_seed(0)
    model = build_model()
    rng = np.random.default_rng(7)
    samples = [random_sample(rng, length, two_documents) for length in (41, 17, 29)]
    for sample in samples:
        sample["num_positions"] = 0
    batch = collate_packed(samples, pad_id=LAYOUT.pad_id)
    patch_lengths = compute_patches(
        batch["tokens"], batch["is_speech"], PatchingConfig(strategy="static", patch_size=4), LAYOUT,
        segment_ids=batch["segment_ids"], is_silence=batch["is_silence"], document_ids=batch["document_ids"],
    ).patch_lengths.long()
    merged = merge_padding_patches(patch_lengths, batch["num_tokens"])
    assert merged.shape[1] < patch_lengths.shape[1] - 10
    inputs = batch["tokens"][:, :-1].long()
    documents = batch["document_ids"][:, :-1].long() if two_documents else None
    with torch.no_grad():
        reference = model(inputs, patch_lengths, document_ids=documents)
        logits = model(inputs, merged, document_ids=documents)
    for row, count in enumerate(batch["num_tokens"].tolist()):
        torch.testing.assert_close(logits[row, :count - 1], reference[row, :count - 1], rtol=0, atol=1e-5)


def flipped_logits(model: LSTModel, tokens: list[int], flip: int, config: PatchingConfig) -> tuple:
    """Logits [N, V] of a row patched as training patches it, with token ``flip`` a speech unit,
    then with it ``<t>``: the training forward's view before and after the flip."""
    outputs = []
    for replacement in (LAYOUT.unit_offset + 3, LAYOUT.text_marker_id):
        row = torch.tensor(tokens[:flip] + [replacement] + tokens[flip + 1:])
        is_speech = torch.as_tensor(LAYOUT.is_unit(row.numpy()))
        lengths = compute_patches(row, is_speech, config, LAYOUT).patch_lengths.long()
        with torch.no_grad():
            outputs.append(model(row[None, :-1], lengths[None])[0])
    return tuple(outputs)


# B <t> text text <s> u u u u u [flip] text text EOS: at p = 4 the span's fifth unit (position 9) is a
# short last run, which the paper rule closes only when token 10 is not a unit
LOOKAHEAD_ROW = [LAYOUT.bos_id, LAYOUT.text_marker_id, 5, 6, LAYOUT.speech_marker_id,
                 *(LAYOUT.unit_offset + u for u in (1, 2, 3, 4, 5)), LAYOUT.unit_offset, 7, 8, LAYOUT.eos_id]


@pytest.mark.parametrize("fold", [False, True])
def test_paper_boundaries_let_position_i_see_whether_token_i_plus_1_is_speech(model_parallel, fold):
    """The look-ahead of the paper's rule, demonstrated: flipping token 10 between a unit and <t>
    changes the logits of position 9, which predicts token 10."""
    torch.manual_seed(0)
    unit_logits, marker_logits = flipped_logits(build_model(), LOOKAHEAD_ROW, 10,
                                                PatchingConfig(fold_speech_marker=fold))
    torch.testing.assert_close(unit_logits[:9], marker_logits[:9], rtol=0, atol=1e-5)
    assert (unit_logits[9] - marker_logits[9]).abs().max() > 1e-4


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("flip", [10, 5])  # after the short last run; right after <s> (folded or not)
def test_causal_boundaries_keep_position_i_blind_to_token_i_plus_1(model_parallel, fold, flip):
    torch.manual_seed(0)
    unit_logits, marker_logits = flipped_logits(build_model(), LOOKAHEAD_ROW, flip,
                                                PatchingConfig(fold_speech_marker=fold, patch_boundary="causal"))
    torch.testing.assert_close(unit_logits[:flip], marker_logits[:flip], rtol=0, atol=1e-5)
    assert (unit_logits[flip] - marker_logits[flip]).abs().max() > 1e-4, "token i+1 influences nothing"


def test_causal_boundaries_hold_on_random_rows(model_parallel):
    """Every unit position of random rows: flipping the next token leaves its logits unchanged."""
    torch.manual_seed(0)
    model = build_model()
    config = PatchingConfig(patch_size=3, patch_boundary="causal")
    rng = np.random.default_rng(5)
    tokens = random_sample(rng, 30)["tokens"].tolist()
    positions = [i for i in range(1, 28) if LAYOUT.is_unit(np.array(tokens[i]))]
    assert len(positions) >= 5
    for i in positions:
        unit_logits, marker_logits = flipped_logits(model, tokens, i + 1, config)
        torch.testing.assert_close(unit_logits[: i + 1], marker_logits[: i + 1], rtol=0, atol=1e-5)


def test_patch_boundary_flag_reaches_the_patching_config(capsys):
    from megatron_lst.training.arguments import parse_args

    config = parse_args(["--model", "lst", "--patch-boundary", "causal"])
    assert config.patching.to_patching_config(10, 1).patch_boundary == "causal"
    assert parse_args(["--model", "lst"]).patching.patch_boundary == "paper"
    with pytest.raises(SystemExit):
        parse_args(["--model", "lst", "--patch-boundary", "lookahead"])
    assert "--patch-boundary: invalid choice: 'lookahead'" in capsys.readouterr().err
