"""No process a trainer starts outlives it, even when the trainer is SIGKILLed.

A trainer starts helper processes it does not own: megatron-core's checkpoint writer spawns a
``multiprocessing`` manager (and with it the resource tracker) and forks one writer per bucket on
every save, and the DataLoader forks ``num_workers`` workers. None of them watches its parent, so a
``kill -9`` of the trainer (no cleanup of the trainer runs then) left them running for good,
hundreds of MB each.

The kernel can do what the dead trainer cannot: a process that set ``PR_SET_PDEATHSIG`` gets
SIGKILL the moment its parent exits, however the parent died. Every child sets it as the first
thing it does: forked children through an ``os.register_at_fork`` hook (inherited by their own
forked children in turn), spawned ones when they re-import the trainer's main module
(``pretrain_lst.py`` calls :func:`adopt_spawned_child` at import when run as ``__mp_main__``). A
parent that died before the child asked is caught by comparing ``getppid()`` with the pid the parent
left behind. Why not a process group: the trainer would have to leave its shell's group (losing
Ctrl-C and job control) and something outside the dead trainer would still have to send the kill.

Linux only: elsewhere these are no-ops. The kernel ties the signal to the *thread* that created the
child, so children must be started from threads that live as long as the process (the main thread
and the DataLoader's workers are).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Optional

# the pid of the process that spawned this one (read by a spawned child, which shares no memory with it)
PARENT_PID_ENV = "MEGATRON_LST_PARENT_PID"
_PR_SET_PDEATHSIG = 1

_owner_pid: Optional[int] = None  # the pid of the process that installed the fork hook; a forked child reads its copy


def die_with_parent(parent_pid: Optional[int]) -> None:
    """Have the kernel SIGKILL this process when its parent exits; exit at once if the parent
    (``parent_pid``) is already gone, since no signal would ever come then."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # reparented already: the parent died before we asked


def _forked_child() -> None:
    global _owner_pid
    die_with_parent(_owner_pid)
    _owner_pid = os.getpid()
    os.environ[PARENT_PID_ENV] = str(_owner_pid)


def install() -> None:
    """Make every child this process starts from now on die with it (and their children with them).

    Call it early in a process that starts children (the trainer's ``main``), before any is started."""
    global _owner_pid
    first = _owner_pid is None
    _owner_pid = os.getpid()
    os.environ[PARENT_PID_ENV] = str(_owner_pid)  # spawned children inherit the environment, not memory
    if first and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forked_child)


def adopt_spawned_child() -> None:
    """In a child started with the ``spawn`` method: die with the parent, and pass that on to our own
    children. Its parent is named by :data:`PARENT_PID_ENV`; without it (a parent that never called
    :func:`install`) the child is left alone."""
    parent = os.environ.get(PARENT_PID_ENV)
    if parent is None or not parent.isdigit():
        return
    die_with_parent(int(parent))
    install()
