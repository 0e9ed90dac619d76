"""The torch thread: every in-process model call runs on one thread, whoever calls it
(`lookahead.engines.torch_thread`: libgomp makes ops slow on a thread other than the one whose
worker pool the process already holds; measured 32 vs 51-54 ms per decode step)."""

from __future__ import annotations

import threading

import pytest

from lookahead.config import SamplingParams
from lookahead.engines.torch_thread import is_torch_thread, on_torch_thread, torch_thread


def test_calls_from_any_thread_run_on_one_thread_and_nested_calls_run_at_once():
    seen: list[int] = []

    def where() -> int:
        seen.append(threading.get_ident())
        return on_torch_thread(threading.get_ident)  # nested: runs at once, no deadlock

    results = [on_torch_thread(where)]
    workers = [threading.Thread(target=lambda: results.append(on_torch_thread(where))) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=10)
    assert len(set(seen)) == 1 and set(results) == set(seen)
    assert threading.get_ident() not in seen and not is_torch_thread()


def test_an_exception_reaches_the_caller_and_the_thread_goes_on():
    @torch_thread
    def fail(message: str) -> None:
        raise ValueError(message)

    with pytest.raises(ValueError, match="bad input"):
        fail("bad input")
    assert on_torch_thread(lambda: 41 + 1) == 42


def test_the_hf_engine_decodes_on_the_torch_thread_whoever_calls(model, tok):
    """generate from the main thread and from another thread: the model's forward passes run on the torch thread."""
    from lookahead.engines.hf import HFEngine

    engine = HFEngine(model, tok)
    forwards: list[bool] = []
    hook = model.register_forward_hook(lambda *args: forwards.append(is_torch_thread()))
    try:
        engine.generate(["hello world"], SamplingParams(max_new_tokens=3))
        done = threading.Event()
        threading.Thread(target=lambda: (engine.generate(["a b c"], SamplingParams(max_new_tokens=3)), done.set())).start()
        assert done.wait(30)
    finally:
        hook.remove()
    assert forwards and all(forwards)


def test_a_long_call_sees_a_call_waiting_for_the_torch_thread():
    """waiting(): what the joining loop asks between passes (it takes no new callers while it is True)."""
    import time

    from lookahead.engines.torch_thread import waiting

    seen: list[bool] = []
    started, queued = threading.Event(), threading.Event()

    def long() -> None:
        seen.append(waiting())
        started.set()
        assert queued.wait(10)
        seen.append(waiting())

    caller = threading.Thread(target=lambda: on_torch_thread(long))
    caller.start()
    assert started.wait(10)
    other = threading.Thread(target=lambda: on_torch_thread(lambda: None))
    other.start()
    time.sleep(0.1)  # the other call is in the queue
    queued.set()
    caller.join(10)
    other.join(10)
    assert seen == [False, True] and not waiting()


def test_the_joining_loop_takes_no_callers_while_another_models_call_waits(model, tok, monkeypatch):
    """HFEngine.generate_requests asks join() between passes only while no other call waits for the torch thread."""
    from lookahead.engines.base import RowRequest
    from lookahead.engines.hf import HFEngine
    from lookahead.engines.hf import engine as hf_engine

    engine = HFEngine(model, tok)
    for busy, expect in ((True, 0), (False, 4)):
        monkeypatch.setattr(hf_engine, "torch_waiting", lambda busy=busy: busy)
        asked: list[int] = []
        out: list = []
        request = RowRequest(["hello world"], [SamplingParams(max_new_tokens=4)], out.append)
        engine.generate_requests([request], join=lambda live, asked=asked: asked.append(live) or [])
        assert len(out) == 1 and (len(asked) >= expect if expect else asked == [])
