"""PreemptionHandler: records SIGTERM/SIGUSR1 and survives a native library replacing its handler."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

import pytest

from megatron_lst.training.signals import PreemptionHandler
from tests.conftest import signal_after_two_logged_steps

SIG_IGN = 1


def replace_handler_from_c(sig: int) -> None:
    """What a native library does: ``signal()`` from C, unseen by Python's own handler table."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
    libc.signal(sig, SIG_IGN)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_is_recorded_and_the_previous_handler_restored(sig):
    before = signal.getsignal(sig)
    handler = PreemptionHandler()
    assert not handler.should_stop()
    os.kill(os.getpid(), sig)
    assert handler.should_stop() and handler.signal_name == signal.Signals(sig).name
    handler.restore()
    assert signal.getsignal(sig) is before


def test_a_handler_replaced_from_c_is_reinstalled_at_the_next_step():
    handler = PreemptionHandler()
    try:
        replace_handler_from_c(signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)  # ignored: the library's handler is in place
        assert not handler.should_stop()  # ... and this step's check puts ours back
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler.should_stop() and handler.signal_name == "SIGUSR1"
    finally:
        handler.restore()


def test_the_stop_message_says_whether_the_run_saves():
    handler = PreemptionHandler()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert handler.should_stop()
        without = handler.stop_reason(None)
        assert "without saving" in without and "saved" not in without.replace("without saving", "")
        assert "no --save" in without
        with_save = handler.stop_reason("/runs/ckpt")
        assert with_save.startswith("received SIGTERM") and "saved a checkpoint to /runs/ckpt" in with_save
    finally:
        handler.restore()


def test_sigterm_without_save_says_it_stops_without_saving(base_args, tmp_path):
    log = tmp_path / "run.jsonl"
    returncode, output = signal_after_two_logged_steps([*base_args, "--train-iters", "100000", "--log-json", str(log)],
                                                       log)
    assert returncode == 0, output[-3000:]
    assert "received SIGTERM: exited without saving (no --save directory was given)" in output
    assert "saving" not in output.replace("without saving", "") and "saved" not in output
