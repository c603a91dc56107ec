"""Our story-completion report in lm-evaluation-harness's results shape, for tools that read it.

One task per benchmark and direction, named ``<benchmark>_<direction>`` (``storycloze_s2s``,
``hellaswag_t2t``, ...), under ``results`` with lm-eval's metric keys (``<metric>,<filter>``,
filter ``none``):

* ``acc,none``: accuracy of the summed ending log-prob (lm-eval's ``acc``);
* ``acc_norm,none``: accuracy of the ending log-prob per unit of length (our ``mean``: per speech
  unit, or per text token). lm-eval normalises by the ending's length in bytes of text; speech
  endings have no bytes, so this mean is the length-fair score here, for text too (the JSON says
  so under ``configs``);
* ``*_stderr,none``: lm-eval's standard error of a mean of 0/1 outcomes, sqrt(p (1 - p) / (n - 1)).

``n-samples`` gives the benchmark's items (``original``) and those scored (``effective``, after
items that do not fit the model's length were skipped). Our own report (accuracy with Wilson
intervals, all three scores, per-item scores) is the other file; this one is a summary.
"""

from __future__ import annotations

import math

from megatron_lst.evaluation.scoring import Accuracy, DirectionResult


def task_name(benchmark: str, result: DirectionResult) -> str:
    direction = result.direction.label.replace("->", "2").lower()  # S->T -> s2t
    return f"{benchmark}_{direction}"


def mean_stderr(accuracy: Accuracy) -> float:
    """Standard error of the mean of ``total`` 0/1 outcomes (sample variance), as lm-eval reports it."""
    n = accuracy.total
    if n < 2:
        return float("nan")
    p = accuracy.value
    return math.sqrt(p * (1 - p) / (n - 1))


def lm_eval_results(benchmark: str, results: list[DirectionResult], total_items: int, model: str) -> dict:
    """The lm-eval-harness results document of our directions."""
    out: dict = {"results": {}, "versions": {}, "n-shot": {}, "higher_is_better": {}, "n-samples": {},
                 "configs": {}, "config": {"model": model}}
    for result in results:
        task = task_name(benchmark, result)
        acc, acc_norm = result.accuracy["sum"], result.accuracy["mean"]
        out["results"][task] = {"alias": task, "acc,none": acc.value, "acc_stderr,none": mean_stderr(acc),
                                "acc_norm,none": acc_norm.value, "acc_norm_stderr,none": mean_stderr(acc_norm)}
        out["versions"][task] = 1
        out["n-shot"][task] = 0
        out["higher_is_better"][task] = {"acc": True, "acc_norm": True}
        out["n-samples"][task] = {"original": total_items, "effective": result.scored}
        out["configs"][task] = {"task": task, "output_type": "multiple_choice", "num_fewshot": 0,
                                "metric_list": [{"metric": "acc", "note": "summed ending log-prob"},
                                                {"metric": "acc_norm", "note": "ending log-prob per speech unit or text token"}],
                                "direction": result.direction.label}
    return out
