"""The demo report's training table: last numbers of each run and its realised token shares."""

from __future__ import annotations

import numpy as np

from megatron_lst.demo.report import summarise_run, training_table


def rows(share_speech: float) -> list[dict]:
    train = {"kind": "train", "iteration": 2, "flops_so_far": 3e9, "tokens_so_far": 900.0, "lm_loss": 5.5,
             "share_so_far_speech_doc": share_speech, "share_so_far_text_doc": 1 - share_speech,
             "share_speech_doc": 1.0, "share_text_doc": 0.0}  # a step's own shares are not the run's
    return [{"kind": "train", "iteration": 1, "lm_loss": 6.0}, train,
            {"kind": "valid", "iteration": 2, "lm_loss": 5.7, "speech_loss": 6.1, "text_loss": 5.2}]


def test_summary_takes_the_last_running_shares():
    summary = summarise_run(rows(0.331))
    assert summary["token_shares"] == {"speech_doc": 0.331, "text_doc": 1 - 0.331}
    assert (summary["iterations"], summary["valid_loss"]) == (2, 5.7)


def test_training_table_lists_the_shares_in_percent():
    table = training_table({"lst": rows(0.331), "baseline": [{"kind": "train", "iteration": 2, "lm_loss": 5.0}]})
    assert table[0].endswith("| token shares |")
    assert table[2] == ("| lst | 2 | 3.000e+09 | 900 | 5.5000 | 5.7000 | 6.1000 | 5.2000 | "
                        "speech_doc 33.1%, text_doc 66.9% |")
    assert table[3].endswith("| - |")  # no blend, no shares


def test_accuracy_matrix_puts_variants_side_by_side():
    from megatron_lst.demo.report import accuracy_matrix

    rows = [{"model": m, "benchmark": "lexical", "direction": "S->S", "score": s, "accuracy": a,
             "ci95_low": a - 0.1, "ci95_high": a + 0.1}
            for m, a in (("baseline", 0.6), ("lst", 0.7)) for s in ("sum", "mean")]
    table = accuracy_matrix(rows, "sum", ["lst", "baseline", "lst-aligned"])
    assert table[0] == "| model | lexical S->S |"
    assert table[2:] == ["| lst | 0.70 [0.60, 0.80] |", "| baseline | 0.60 [0.50, 0.70] |", "| lst-aligned | - |"]


def test_switch_token_table_reads_both_rules_and_baselines():
    from megatron_lst.demo.report import switch_token_table

    scores = {"nll": 1.0, "nll_partial_last_patch": 2.0}
    table = switch_token_table({
        "lst-static": {"trained_patch_boundary": "paper",
                       "<t> after speech": {"paper": scores, "causal": {"nll": 1.5, "nll_partial_last_patch": 3.0}}},
        "baseline": {"trained_patch_boundary": None, "EOS after speech": {"none": scores}}})
    assert table[2] == "| lst-static | paper | <t> after speech | 1.0000 | 1.5000 | 2.0000 / 3.0000 |"
    assert table[3] == "| baseline | no patches | EOS after speech | 1.0000 | 1.0000 | - |"


def test_smoothing_is_a_bias_corrected_moving_average():
    from megatron_lst.demo.report import smooth

    # weight 0.5: averages 0.5, 0.5 * 0.5 + 0.5 * 3 = 1.75, divided by 1 - 0.5 ** step
    assert smooth([1.0, 3.0], weight=0.5).tolist() == [1.0, 1.75 / 0.75]
    np.testing.assert_allclose(smooth([2.0] * 5), [2.0] * 5)  # a flat curve stays where it is from the first step


def test_accuracy_rows_carry_the_chance_level_and_plots_show_every_score(tmp_path):
    from megatron_lst.demo.report import accuracy_rows, plot_accuracy

    accuracy = {"accuracy": 0.5, "ci95_low": 0.4, "ci95_high": 0.6, "correct": 1, "total": 2}
    result = {"results": {"S->S": {"accuracy": {"mean": accuracy, "sum": accuracy, "seq_nll": accuracy},
                                   "items": [{"scores": {"mean": [0.0, 1.0, 2.0, 3.0]}}]}}}
    rows = accuracy_rows({"lst": {"hellaswag": result}, "baseline": {"hellaswag": result}})
    assert {row["chance"] for row in rows} == {0.25} and len(rows) == 6
    plot_accuracy(rows, "hellaswag", tmp_path / "hellaswag.png")
    assert (tmp_path / "hellaswag.png").stat().st_size > 10_000
