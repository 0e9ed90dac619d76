"""The analytic speedup model (lookahead.speedup): hand-computed cases; eval-record estimates (lookahead.eval.fit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lookahead.errors import DataError
from lookahead.eval.fit import from_eval_records, is_pipelined, unmodelled
from lookahead.speedup import (
    GPU_REFERENCE,
    batch_cost_at,
    best_gamma,
    expected_steps,
    gpu_projection,
    predicted_speedup,
    round_cost,
)

RECORDS = Path(__file__).parent.parent / "docs" / "benchmarks" / "gsm8k-cpu" / "records.jsonl"


def test_expected_steps_hand_computed():
    """E = 1 + α1 + α1α2 + ...; the geometric closed form for one α; missing depths reuse the last α."""
    assert expected_steps([0.5, 0.4], 2) == pytest.approx(1 + 0.5 + 0.2)
    assert expected_steps([0.8], 3) == pytest.approx((1 - 0.8**4) / (1 - 0.8))
    assert expected_steps([0.9, 0.9], 0) == 1.0
    assert expected_steps([], 3) == 1.0


def test_round_cost_units_and_extrapolation():
    """cost = γ·c + b(γ+1) + v(γ), v(0) = 0; a batch curve list extends linearly past its end."""
    assert round_cost(0, 0.3, [1.0, 1.5], 0.7) == pytest.approx(1.0)  # an ar round: no draft, no verifier
    assert round_cost(2, 0.3, [1.0, 1.5, 1.8], 0.1) == pytest.approx(0.6 + 1.8 + 0.1)
    assert batch_cost_at([1.0, 1.5, 1.8], 5) == pytest.approx(1.8 + 2 * 0.3)
    assert round_cost(1, 0.2, lambda k: 1.0, lambda g: 0.05 * g) == pytest.approx(0.2 + 1.0 + 0.05)
    # token-level speculation divides the target's and the draft's costs
    assert round_cost(1, 0.2, [1.0, 1.2], 0.0, token_speedup=2.0) == pytest.approx(0.1 + 0.6)


def test_zero_acceptance_best_gamma_is_zero():
    """α = 0 everywhere: any speculation only adds cost -> plain ar rounds."""
    assert best_gamma([0.0, 0.0], c=0.01, batch_cost=[1.0, 1.0, 1.0], verify_cost=0.0, max_gamma=4) == 0
    assert predicted_speedup([0.0], 1, 0.2, [1.0, 1.6], 0.0) == pytest.approx(1 / 1.8)


def test_high_acceptance_cheap_draft_best_gamma_is_max():
    assert best_gamma([0.95], c=0.02, batch_cost=lambda k: 1.0 + 0.01 * (k - 1), verify_cost=0.0, max_gamma=5) == 5


def test_batch_curve_changes_best_gamma():
    """Same α and c: a flat (GPU-like) batch curve favours deep rounds, a steep (CPU-like) one shallow."""
    alpha, c = [0.8], 0.1
    flat = best_gamma(alpha, c, lambda k: 1.0, 0.0, max_gamma=6)
    steep = best_gamma(alpha, c, lambda k: float(k), 0.0, max_gamma=6)
    assert flat >= 4 and steep == 0
    # hand check of the middle case: b(k) = 1 + 0.3 (k-1), c = 0.15, α = 0.8 -> γ = 2
    def b(k):
        return 1 + 0.3 * (k - 1)

    assert best_gamma([0.8], 0.15, b, 0.0, 4) == 2
    assert predicted_speedup([0.8], 2, 0.15, b, 0.0) == pytest.approx(2.44 / (0.3 + 1.6))


def test_token_speedup_predicts_sd():
    """sd = an ar round with token SD: its predicted speedup is the factor itself."""
    assert predicted_speedup([0.5], 0, 0.2, [1.0], 0.0, token_speedup=1.4) == pytest.approx(1.4)


def _record(run, mode, problem, target_s, rounds, tokens, trace=(), draft_s=0.0, drafted=0, gamma=None, wall=None):
    return {
        "problem": problem, "run": run, "sample": 0, "mode": mode, "status": "ok",
        "overrides": {} if gamma is None else {"gamma": gamma},
        "draft_s": draft_s, "target_s": target_s, "verify_s": 0.0, "rounds": rounds,
        "committed_steps": rounds, "drafted_steps": drafted, "completion_tokens": tokens,
        "wall_time_s": wall if wall is not None else draft_s + target_s, "acceptance_by_depth": [],
        "trace": list(trace),
    }


def _step(rnd, source, draft):
    return {"round": rnd, "depth": 1, "source": source, "draft": draft}


def test_from_eval_records_synthetic():
    """Synthetic records with known α, c and b(2) are read back; measured speedups are paired wall ratios."""
    ar = _record("ar", "ar", 0, target_s=10.0, rounds=10, tokens=100)
    # lr γ=1: 10 rounds, every round drafts one step (rows = 2); depth 1 accepted in 4 of 10 rounds
    trace = []
    for r in range(10):
        if r < 4:
            trace += [_step(r, "draft", "x"), _step(r, "target", None)]  # accepted + bonus
        else:
            trace += [_step(r, "target", "y")]  # rejected at depth 1: fallback step
    lr = _record("lr[gamma=1]", "lr", 0, target_s=15.0, rounds=10, tokens=100, trace=trace,
                 draft_s=2.0, drafted=10, gamma=1, wall=17.0)
    inputs = from_eval_records([ar, lr])
    assert inputs.alpha == [pytest.approx(0.4)]
    assert inputs.depth_trials == [10]
    assert inputs.c == pytest.approx(0.2)  # 0.2 s per draft step / 1.0 s per target step
    assert inputs.batch_cost[1] == pytest.approx(1.5)
    assert inputs.target_step_s == pytest.approx(1.0)
    assert inputs.measured["lr[gamma=1]"] == pytest.approx(10.0 / 17.0)
    assert inputs.predict("lr", 1) == pytest.approx(1.4 / (0.2 + 1.5))
    rows = {row["run"]: row for row in inputs.compare()}
    assert rows["lr[gamma=1]"]["gamma"] == 1 and rows["ar"]["predicted"] == 1.0


def test_pipelined_runs_stay_out_of_the_fit():
    """A pipelined run (overlapping times, one-row target calls) or a tree run (width > 1) changes
    none of the shared inputs; it still gets its own α in per_run."""
    ar = _record("ar", "ar", 0, target_s=10.0, rounds=10, tokens=100)
    trace = [_step(r, "draft", "x") if r < 4 else _step(r, "target", "y") for r in range(10)]
    lr = _record("lr[gamma=1]", "lr", 0, target_s=15.0, rounds=10, tokens=100, trace=trace,
                 draft_s=2.0, drafted=10, gamma=1, wall=17.0)
    piped = _record("lr[gamma=1,pipeline=true]", "lr", 0, target_s=40.0, rounds=10, tokens=100, draft_s=9.0,
                    drafted=10, gamma=1, wall=30.0, trace=[_step(r, "target", "y") for r in range(10)])
    piped["overrides"]["pipeline"] = True
    assert is_pipelined(piped) and not is_pipelined(lr)
    assert "pipelined" in unmodelled(piped) and unmodelled(lr) is None
    alone, both = from_eval_records([ar, lr]), from_eval_records([ar, lr, piped])
    tree = dict(lr, run="lr[width=2]", overrides={"gamma": 1, "width": 2}, target_s=40.0, drafted_steps=30)
    assert "width=2 drafts a tree" in unmodelled(tree)
    assert from_eval_records([ar, lr, tree]).batch_cost == alone.batch_cost  # a tree run stays out of the fit
    assert (both.alpha, both.c, both.batch_cost) == (alone.alpha, alone.c, alone.batch_cost)
    assert both.per_run["lr[gamma=1,pipeline=true]"]["alpha"] == [0.0]
    assert both.measured["lr[gamma=1,pipeline=true]"] == pytest.approx(10.0 / 30.0)


def test_a_run_over_another_draft_model_has_its_own_c_and_stays_out_of_the_shared_fit():
    """Guards the per-run draft cost: lr[draft.model=X] (here a draft as costly as the target,
    always accepted) gets its own c and α; the shared α and c stay the config draft's."""
    ar = _record("ar", "ar", 0, target_s=10.0, rounds=10, tokens=100)
    lr = _record("lr[gamma=1]", "lr", 0, target_s=15.0, rounds=10, tokens=100, draft_s=2.0, drafted=10,
                 gamma=1, wall=17.0, trace=[_step(r, "target", "y") for r in range(10)])
    every = [s for r in range(5) for s in (_step(r, "draft", "x"), _step(r, "target", None))]  # 2 steps a round
    big = _record("lr[gamma=1,draft.model=t]", "lr", 0, target_s=7.5, rounds=5, tokens=100, draft_s=5.0,
                  drafted=5, gamma=1, wall=12.5, trace=every)
    big["overrides"]["draft.model"] = "t"
    big["committed_steps"] = 10  # 100 tokens in 10 steps of 10 tokens, as ar's: one step costs 1 s
    alone, both = from_eval_records([ar, lr]), from_eval_records([ar, lr, big])
    assert (both.alpha, both.c) == (alone.alpha, alone.c) == ([0.0], pytest.approx(0.2))
    own = both.for_run("lr[gamma=1,draft.model=t]")
    assert own.c == pytest.approx(1.0) and own.alpha == [1.0]  # 1 s per draft call / 1 s per target step
    assert own.predict("lr", 1) == pytest.approx(2 / (1.0 + both.batch_cost[1]))


def test_the_plain_ar_run_is_the_unit():
    """With a second ar run over other options (slower, listed after the plain one), the unit and
    the measured speedups stay the plain ar run's; the other ar run is measured against it."""
    ar = _record("ar", "ar", 0, target_s=10.0, rounds=10, tokens=100)
    slow = _record("ar[target.options.cache_prompt=false]", "ar", 0, target_s=30.0, rounds=10, tokens=100)
    slow["overrides"] = {"target.options.cache_prompt": False}
    lr = _record("lr[gamma=1]", "lr", 0, target_s=15.0, rounds=10, tokens=100, draft_s=2.0, drafted=10,
                 gamma=1, wall=17.0)
    for order in ([ar, slow, lr], [slow, ar, lr]):
        inputs = from_eval_records(order)
        assert inputs.target_step_s == pytest.approx(1.0)
        assert inputs.measured["ar"] == pytest.approx(1.0)
        assert inputs.measured["ar[target.options.cache_prompt=false]"] == pytest.approx(10.0 / 30.0)
        assert inputs.measured["lr[gamma=1]"] == pytest.approx(10.0 / 17.0)


def test_gpu_projection_is_labelled_and_follows_the_model():
    projection = gpu_projection(max_gamma=3, alphas=(0.0, 0.45))
    assert "PROJECTION" in projection["label"] and "not a measurement" in projection["label"]
    for name, figure in projection["inputs"].items():  # every input says where it comes from
        assert figure["source"].startswith(("published:", "assumed:")), name
    rows = {(r["alpha"], r["gamma"]): r for r in projection["rows"]}
    c, v = GPU_REFERENCE["c"].value, GPU_REFERENCE["verify_cost"].value
    slope, f = GPU_REFERENCE["batch_cost_slope"].value, GPU_REFERENCE["token_speedup"].value
    cost = 2 * c + 1 + slope * 2 + v  # γ = 2: two draft steps, three target rows, one verifier call
    assert rows[(0.45, 2)]["lr"] == pytest.approx((1 + 0.45 + 0.45**2) / cost, abs=1e-3)
    assert rows[(0.45, 2)]["lr+sd"] == pytest.approx((1 + 0.45 + 0.45**2) / (cost - v) * f / (1 + v * f / (cost - v)), abs=1e-3)
    assert rows[(0.0, 1)]["lr"] < 1.0 and projection["best_gamma"]["0.0"]["lr"] == 0  # nothing accepted: ar
    assert projection["best_gamma"]["0.45"]["lr"] >= 1
    assert projection["published"]["lr (AIME24)"]["value"] == 1.19


def test_from_eval_records_needs_ar():
    with pytest.raises(DataError, match="ar"):
        from_eval_records([_record("lr", "lr", 0, 1.0, 1, 10)])


@pytest.mark.skipif(not RECORDS.exists(), reason="benchmark records not in this checkout")
def test_from_eval_records_real_benchmark():
    """On the committed CPU benchmark (acceptance 0): best γ is 0 and lr is predicted slower than ar."""
    records = [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]
    inputs = from_eval_records(records)
    assert inputs.alpha and max(inputs.alpha) < 0.05
    assert inputs.best_gamma(4) == 0
    for row in inputs.compare():
        if row["mode"] == "lr":
            assert row["predicted"] < 1.0 and row["measured"] < 1.0
        if row["mode"] == "sd":  # the sd factor is the measured target-time ratio
            assert row["predicted"] == pytest.approx(row["measured"], rel=0.05)


def test_incomplete_draft_steps_end_the_lookahead_hand_computed():
    """p = 0.5: depth 2 is drafted in half the rounds; costs and gains are expectations over k."""
    from lookahead.speedup import best_gamma

    b = [1.0, 1.5, 1.8]
    # k complete drafts: P(0) = 0.5, P(1) = 0.25, P(2) = 0.25; draft calls 1 + 0.5
    assert round_cost(2, 0.2, b, 0.1, complete=0.5) == pytest.approx(1.5 * 0.2 + 0.5 * 1.0 + 0.25 * 1.5 + 0.25 * 1.8 + 0.5 * 0.1)
    assert expected_steps([1.0, 1.0], 2, complete=0.5) == pytest.approx(1 + 0.5 + 0.25)
    assert round_cost(2, 0.2, b, 0.1, complete=1.0) == pytest.approx(0.4 + 1.8 + 0.1)  # p = 1: the plain formula
    assert expected_steps([0.9], 3, complete=0.0) == 1.0 and round_cost(3, 0.2, b, 0.1, complete=0.0) == pytest.approx(1.2)
    # a draft that rarely completes a step makes deep lookahead pointless even when it is always right
    assert best_gamma([1.0], 0.1, [1.0, 1.1, 1.2, 1.3, 1.4], 0.0, 4, complete=1.0) == 4
    assert best_gamma([1.0], 0.1, [1.0, 1.1, 1.2, 1.3, 1.4], 0.0, 4, complete=0.05) == 0
    with pytest.raises(ValueError, match="probability"):
        round_cost(1, 0.2, b, 0.0, complete=1.5)


def test_bench_model_script_compares_predicted_and_measured(tmp_path):
    """scripts/bench_model.py on a small synthetic eval: lr rows get an error, ar/sd are not predictions."""
    import importlib.util
    import json
    from pathlib import Path

    def rec(problem, run, mode, wall, draft_s=0.0, target_s=None, trace=(), drafted=0, overrides=None):
        return {"problem": problem, "sample": 0, "run": run, "mode": mode, "status": "ok", "overrides": overrides or {},
                "wall_time_s": wall, "draft_s": draft_s, "target_s": wall if target_s is None else target_s,
                "verify_s": 0.0, "rounds": 4, "committed_steps": 4, "completion_tokens": 40,
                "drafted_steps": drafted, "acceptance_by_depth": [0.0] if drafted else [], "trace": list(trace),
                "stats": {"draft_calls": drafted}}  # fmt: skip

    rejected = [{"round": i, "depth": 1, "source": "target", "draft": "x\n\n", "target": "y\n\n"} for i in range(4)]
    records = []
    for p in range(3):
        records += [rec(p, "ar", "ar", 4.0), rec(p, "sd", "sd", 2.0),
                    rec(p, "lr[gamma=1]", "lr", 8.0, draft_s=1.6, target_s=6.4, trace=rejected, drafted=4,
                        overrides={"gamma": 1})]  # fmt: skip
    folder = tmp_path / "ev"
    folder.mkdir()
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_model.py"
    spec = importlib.util.spec_from_file_location("bench_model", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main([str(folder)])
    rows = {r["run"]: r for r in report["runs"]}
    assert "error" not in rows["sd"] and "not a prediction" in rows["sd"]["note"]
    # α = 0, p = 1, c = 0.4 per draft call, b(2) = 1.6 -> predicted 1 / 2.0 = 0.5 = measured 4 / 8
    assert rows["lr[gamma=1]"]["predicted"] == pytest.approx(0.5, rel=1e-3)
    assert rows["lr[gamma=1]"]["error"] == pytest.approx(0.0, abs=1e-3)
    assert json.loads((folder / "speedup_model.json").read_text())["max_abs_error"] == pytest.approx(0.0, abs=1e-3)
