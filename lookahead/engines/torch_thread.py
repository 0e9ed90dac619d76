"""One thread for the process's torch work: every in-process model loads and runs on it.

Why: PyTorch runs its CPU ops on OpenMP (GNU libgomp in the Linux wheels). libgomp gives every
thread that runs a parallel op a team of worker threads of its own, and once the process holds
more of those workers than it has CPUs it stops letting them spin between ops ("throttled"
spinning): each op then waits for sleeping workers to wake up. A model loaded on one thread (the
main thread) and run on another (the batcher's driver threads, a server's workers, a scheduler's
problem threads) pays that wake-up on every op. Measured on the 2-core machine of this project,
SmolLM2-135M, one row: a decode step took 32 ms on the thread that loaded the model and 51-54 ms
on any other thread, the same as with the workers never spinning (``OMP_WAIT_POLICY=PASSIVE``);
32 ms when one thread loaded and ran it. So the HF engine, the embedding verifier and the
transformers peers load their models and run every forward pass here (`on_torch_thread`, or the
`torch_thread` decorator); callers wait for their call. Calls of different models (target and
draft) take turns, which on a CPU they do anyway: two at once would share the same cores.

A call made from this thread runs at once (a call inside a call never waits for itself). The HF
engine's joining decode loop, which would run as long as callers keep joining it, asks `waiting`
between two forward passes and takes no new callers while another model's call waits here: the
loop drains (its rows end within one step) and the waiting call runs next. Measured on
`server-concurrency`: with a loop that took joiners regardless, a problem whose round needed a
draft step waited for the target loop of the others (adaptive `lr` 0.88x `ar` at 8 clients, p99
43 s at 4); running the waiting calls between two passes instead cut the batches of fixed-γ `lr`
into small ones (0.44x `ar` at K = 8, against 0.79x when each loop ran to its end).

Example:
    >>> on_torch_thread(sum, [1, 2, 3])
    6
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_thread: threading.Thread | None = None
# a Queue, not a SimpleQueue: its idle get() waits on a threading.Condition, which the simulator's clock
# recognises as parked (`lookahead.simulate.modelled.all_parked`)
_work: queue.Queue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = queue.Queue()


def on_torch_thread(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` run on the torch thread; its result, or its exception raised here."""
    if threading.current_thread() is _thread:
        return fn(*args, **kwargs)
    future: Future[R] = Future()
    _work.put((future, fn, args, kwargs))
    _ensure_started()
    return future.result()


def torch_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: every call of ``fn`` runs on the torch thread (`on_torch_thread`)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return on_torch_thread(fn, *args, **kwargs)

    return wrapper


def waiting() -> bool:
    """Does a call wait for the torch thread (a long call on it should wrap up, not grow)?"""
    return not _work.empty()


def is_torch_thread() -> bool:
    """Is the calling thread the torch thread?"""
    return threading.current_thread() is _thread


def _ensure_started() -> None:
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():  # first call, or a child process after fork
            _thread = threading.Thread(target=_serve, name="lookahead-torch", daemon=True)
            _thread.start()


def _serve() -> None:
    while True:
        _execute(*_work.get())


def _execute(future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 -- handed to the caller, never lost in this thread
        future.set_exception(exc)
    else:
        future.set_result(result)


__all__ = ["is_torch_thread", "on_torch_thread", "torch_thread", "waiting"]
