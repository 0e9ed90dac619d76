"""scripts/trace_passes.py: the trace summary behind the simulator's verification-pass model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lookahead.simulate import load_profile

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "trace_passes.py"
PROFILE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "simulate-cpu" / "profile.yaml"


@pytest.fixture(scope="module")
def trace():
    spec = importlib.util.spec_from_file_location("trace_passes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def event(kind, t, s, rows, width, engine="target"):
    return {"kind": kind, "engine": engine, "t": t, "s": s, "rows": rows, "width": width}


def test_passes_are_grouped_and_joins_split_into_forward_and_the_rest(trace):
    events = [
        event("forward", 0.0, 0.3, 1, 126),  # warm-up, before the first join: left out
        event("join", 1.0, 0.10, 1, 0),
        event("forward", 1.02, 0.04, 1, 1),  # inside the join
        event("forward", 1.2, 0.07, 8, 1),
        event("forward", 1.3, 0.07, 8, 1),
        event("verification", 1.4, 0.11, 3, 5),
        event("verification", 1.6, 0.06, 1, 5),
        event("verification", 1.7, 0.003, 2, 5, engine="draft"),  # a draft that speculates too: not the target's
    ]
    report = trace.summarize(events, load_profile(str(PROFILE)).target, str(PROFILE))
    kinds = {(r["kind"]): r for r in report["passes"]}
    assert kinds["decode"]["passes"] == 2 and kinds["join"]["passes"] == 1 and "prefill" not in kinds
    assert report["joins"] == {"count": 1, "wall_s": 0.1, "forward_s": 0.04, "other_ms_per_join": 60.0}
    assert report["target"] == "target"
    by_tokens = {r["tokens"]: r for r in report["verification_by_tokens"]}
    assert set(by_tokens) == {5, 15} and by_tokens[15]["mean_ms"] == 110.0
    costs = load_profile(str(PROFILE)).target
    assert by_tokens[15]["curve_ms_at_tokens_rows"] == round(1000 * costs.step_s(15), 2)
    assert by_tokens[15]["compute_bound_ms"] > by_tokens[15]["memory_bound_ms"]
    totals = report["verification_totals"]
    assert totals["passes"] == 2 and totals["speculating_passes"] == 4  # the target's plain passes count too


def test_without_eval_arguments_it_says_how_to_call_it(trace, capsys):
    assert trace.main(["--out", "x.json"]) == 2
    assert "usage" in capsys.readouterr().err


def test_a_bad_profile_or_eval_argument_is_one_line_and_exit_2(trace, tmp_path, capsys, monkeypatch):
    """The profile is read before the eval runs; a bad eval option gets the eval's own usage error."""
    from lookahead.engines.hf import HFEngine

    for name in ("_forward", "_forward_all", "_join"):  # the script patches them: restored after the test
        monkeypatch.setattr(HFEngine, name, getattr(HFEngine, name))
    out = tmp_path / "x.json"
    assert trace.main(["--out", str(out), "--profile", str(tmp_path / "none.yaml"), "--", "--task", "gsm8k"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert trace.main(["--out", str(out), "--", "--bogus"]) == 2
    assert "No such option" in capsys.readouterr().err and not out.exists()
