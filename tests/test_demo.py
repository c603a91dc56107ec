"""`make demo-quick`'s job end to end: real corpus, real training, a report with every section."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, child_env


@pytest.mark.slow
def test_quick_demo_builds_trains_and_reports(tmp_path):
    result = subprocess.run([sys.executable, "tools/run_demo.py", "--out", str(tmp_path), "--quick"],
                            cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    for section in ("## Training (compute-controlled: equal iterations)", "| baseline | 30 |", "| lst | 30 |",
                    "| bpe-baseline | 30 |", "| lst-static | 30 |", "| lst-static-causal | 30 |",
                    "Cut from this quick run to fit its time budget: lst-aligned, hellaswag, topic_storycloze",
                    "## Patching of the interleaved", "## Evaluation", "| storycloze | S->S |", "| lexical | S->S |",
                    "| lst (aligned scoring) |",
                    "## Patch boundaries: the paper's rule vs strictly causal",
                    "| lst-static | paper | <t> after speech |", "| lst-static-causal | causal | EOS after speech |",
                    "## Fine-tuning: ASR and TTS",
                    "| ASR | lst | word error rate |", "| TTS | baseline | unit error rate |",
                    "| ASR | baseline | NLL gain from the speech", "- TTS lst: unit error rate"):
        assert section in report, section
    # every run's realised token shares of the 33/67 blend, within 2 points by tokens
    shares = re.findall(r"speech_speech_document (\d+\.\d)%, text_text_document (\d+\.\d)%", report)
    assert len(shares) == 5, report
    assert all(abs(float(speech) - 33.0) <= 2.0 for speech, _ in shares), shares
    for plot in ("loss_vs_flops", "patch_lengths", "tokens_per_position", "accuracy_storycloze", "accuracy_lexical"):
        assert f"({plot}.png)" in report and (tmp_path / f"{plot}.png").stat().st_size > 1000
    assert Path(tmp_path / "runs" / "baseline" / "checkpoints" / "latest_checkpointed_iteration.txt").is_file()
