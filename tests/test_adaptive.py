"""Adaptive lookahead depth (lookahead.adaptive + the loop's adaptive_gamma): policy and losslessness."""

from __future__ import annotations

import random
import threading

import pytest

from lookahead import LookaheadReasoner, config_from_dict, load_config
from lookahead.adaptive import AdaptiveGamma
from lookahead.engines.fake import FakeEngine
from lookahead.errors import ConfigError
from lookahead.eval.harness import parse_run_specs
from lookahead.speedup import best_gamma, predicted_speedup

U = 0.01  # scripted seconds of one target decode iteration at batch 1 (s)
STEP = 20  # scripted tokens per step (tokens)


def simulate(policy, rounds, alpha, c, b, rng, verify=0.0):
    """Drive `policy` with a scripted world: acceptance α per depth, costs c, b(k), v (target steps)."""
    chosen = []
    for _ in range(rounds):
        gamma = policy.choose()
        chosen.append(gamma)
        run = 0
        verdicts = []
        for depth in range(1, gamma + 1):
            ok = rng.random() < alpha(depth)
            verdicts.append(ok)
            if not ok:
                break
            run += 1
        rows = gamma + 1
        policy.observe(gamma, run, verdicts, draft_s=gamma * c * STEP * U, target_s=b(rows) * STEP * U,
                       target_rows=rows, verify_s=verify * STEP * U if gamma else 0.0,
                       draft_tokens=gamma * STEP, target_tokens=rows * STEP)
    return chosen


@pytest.mark.parametrize(
    ("a", "c", "slope"),
    [(0.95, 0.02, 0.01), (0.8, 0.15, 0.3), (0.6, 0.15, 0.3), (0.3, 0.2, 0.6)],
)
def test_policy_converges_to_best_gamma(a, c, slope):
    """After warm-up the policy picks the γ `best_gamma` gives for the true (α, c, b)."""
    b = lambda k: 1 + slope * (k - 1)  # noqa: E731
    policy = AdaptiveGamma(max_gamma=4)
    chosen = simulate(policy, 600, lambda d: a, c, b, random.Random(0))
    best = best_gamma([a], c, b, 0.0, 4)
    tail = chosen[-100:]
    assert tail.count(best) >= 90, (best, policy.snapshot())
    snap = policy.snapshot()
    assert snap["alpha"][0] == pytest.approx(a, abs=0.1)
    assert snap["c"] == pytest.approx(c, rel=0.01)


def test_zero_acceptance_settles_on_ar_with_bounded_probes():
    """α = 0: γ = 0 after warm-up; probes cost at most probe_budget of ar time (interval >= extra / budget)."""
    c, b2, budget, n = 0.2, 1.6, 0.02, 3000
    policy = AdaptiveGamma(max_gamma=4, probe_budget=budget)
    chosen = simulate(policy, n, lambda d: 0.0, c, lambda k: 1 + (b2 - 1) * (k - 1), random.Random(1))
    after_warmup = chosen[2:]
    probes = sum(1 for g in after_warmup if g > 0)
    extra = c + b2 - 1  # target steps a γ=1 round costs more than the ar round it replaces
    assert all(g in (0, 1) for g in after_warmup)
    assert 1 <= probes <= len(after_warmup) * budget / extra + 1
    assert probes * extra / len(after_warmup) <= budget  # overhead share of ar time
    assert probes == policy.snapshot()["probes"]
    assert chosen[-1] == 0


def test_probe_notices_rising_acceptance():
    """Acceptance 0, then 0.9 with a cheap draft: a probe succeeds and the policy speculates again."""
    rng = random.Random(2)
    policy = AdaptiveGamma(max_gamma=3)
    b = lambda k: 1 + 0.05 * (k - 1)  # noqa: E731
    simulate(policy, 300, lambda d: 0.0, 0.1, b, rng)
    assert policy.choose() == 0 or policy.snapshot()["probes"] > 0
    chosen = simulate(policy, 1500, lambda d: 0.9, 0.1, b, rng)
    assert chosen[-50:].count(best_gamma([0.9], 0.1, b, 0.0, 3)) >= 45


def test_warmup_starts_with_gamma_one_then_zero():
    """γ = 1 first (measures the draft, a 2-row call, depth-1 acceptance), then γ = 0 (the batch-1 unit)."""
    policy = AdaptiveGamma(max_gamma=4)
    assert policy.choose() == 1
    policy.observe(1, 0, [False], 0.01, 0.03, 2, 0.0, draft_tokens=10, target_tokens=20)
    assert policy.choose() == 0
    assert policy.snapshot()["predicted_speedup"] is None  # no batch-1 cost yet


def test_policy_thread_safe():
    """Four threads share one policy: every observed round is counted once, estimates stay sane."""
    policy = AdaptiveGamma(max_gamma=3)

    def worker(seed):
        simulate(policy, 500, lambda d: 0.5, 0.1, lambda k: 1 + 0.1 * (k - 1), random.Random(seed))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = policy.snapshot()
    assert sum(snap["rounds_by_gamma"].values()) == 2000
    assert 0.35 < snap["alpha"][0] < 0.65


# -- the loop ------------------------------------------------------------------------------------

T = ["A1.\n\n", "A2.\n\n", "A3.\n\n", "A4.\n\n", "A5.\n\n", "A6.\n\n", "Answer \\boxed{6}."]
D = ["A1.\n\n", "A2.\n\n", "XX.\n\n", "A4.\n\n", "YY.\n\n", "A6.\n\n", "Answer \\boxed{6}."]


def make(target_steps, draft_steps, **overrides):
    cfg = config_from_dict({"mode": "lr", "gamma": 3, "max_step_tokens": 64, "max_total_tokens": 1000,
                            "temperature": 0.0, "adaptive_gamma": True, "target": {"backend": "fake"},
                            "draft": {"backend": "fake"}, **overrides})
    target, draft = FakeEngine(target_steps), FakeEngine(draft_steps)
    return LookaheadReasoner(cfg, target=target, draft=draft), target, draft


def test_adaptive_lr_equals_ar_and_reports_gamma_histogram():
    """Exact verifier + greedy: adaptive lr commits exactly ar's text; stats count rounds per γ."""
    reasoner, target, _ = make(T, D)
    ar = reasoner.generate("q", mode="ar").text
    assert ar == "".join(T)
    total = 0
    for _ in range(12):  # many problems: the shared policy moves through warm-up into its choices
        result = reasoner.generate("q")
        assert result.text == ar
        hist = result.stats["gamma_rounds"]
        assert sum(hist.values()) == result.rounds and all(0 <= int(g) <= 3 for g in hist)
        total += result.rounds
    snap = reasoner.policy_for(reasoner.config, "lr").snapshot()
    assert sum(snap["rounds_by_gamma"].values()) == total
    assert "0" in result.stats["gamma_rounds"] or snap["rounds_by_gamma"].get(0)


def test_gamma_zero_round_makes_no_draft_call():
    """A γ = 0 round is an ar round: one target row, no draft call, same text."""
    reasoner, target, draft = make(T, D)

    class AlwaysAr(AdaptiveGamma):
        def choose(self, load: int = 0, batch_costs=None) -> int:
            return 0

    key = (3, repr(reasoner.config.verifier), False)
    reasoner._policies[key] = AlwaysAr(3)
    assert reasoner.policy_for(reasoner.config, "lr") is reasoner._policies[key]
    result = reasoner.generate("q")
    assert result.text == "".join(T)
    assert draft.calls == [] and set(target.calls) == {1}
    assert result.stats["gamma_rounds"] == {"0": len(T)}


def test_fixed_gamma_histogram_and_policy_keys():
    """Without adaptive_gamma every lr round uses the configured γ; policies are per (γ, verifier, family)."""
    reasoner, _, _ = make(T, D, adaptive_gamma=False)
    result = reasoner.generate("q")
    assert result.stats["gamma_rounds"] == {"3": result.rounds}
    assert reasoner.generate("q", mode="ar").stats["gamma_rounds"] == {}
    adaptive, _, _ = make(T, D)
    a = adaptive.policy_for(adaptive.config, "lr")
    assert adaptive.policy_for(adaptive.config, "lr+sd") is not a
    assert adaptive.policy_for(load_config("tiny", ["gamma=5"]), "lr") is not a


def test_two_threads_share_the_policy():
    """Two problems advanced at once on one reasoner share its policy; both stay exactly ar's text."""
    reasoner, _, _ = make(T, D)
    results, errors = [], []

    def solve():
        try:
            state = reasoner.start("q")
            for _ in reasoner.advance(state):
                pass
            results.append(reasoner.result(state, 0.0))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=solve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    assert all(r.text == "".join(T) for r in results)
    snap = reasoner.policy_for(reasoner.config, "lr").snapshot()
    assert sum(snap["rounds_by_gamma"].values()) == sum(r.rounds for r in results)


def test_config_flag_and_run_spec():
    cfg = load_config("tiny", ["adaptive_gamma=true", "gamma=4"])
    assert cfg.adaptive_gamma and cfg.gamma == 4
    runs = parse_run_specs("ar,lr[adaptive_gamma=true,gamma=4]", load_config("tiny"))
    assert runs[1].overrides == {"adaptive_gamma": True, "gamma": 4}
    with pytest.raises(ConfigError, match="adaptive_prior_acceptance"):
        load_config("tiny", ["adaptive_prior_acceptance=1.5"])
    with pytest.raises(ConfigError, match="adaptive_probe_budget"):
        load_config("tiny", ["adaptive_probe_budget=0.2"])


def test_snapshot_speedups_match_model():
    """The snapshot's predicted speedups are `predicted_speedup` of its own estimates."""
    policy = AdaptiveGamma(max_gamma=2)
    simulate(policy, 50, lambda d: 0.5, 0.1, lambda k: 1.0 + 0.2 * (k - 1), random.Random(3))
    snap = policy.snapshot()
    b = snap["batch_cost"]
    expect = predicted_speedup(snap["alpha"], 1, snap["c"], lambda k: b[k], snap["verify_cost"])
    assert snap["predicted_speedup"][1] == pytest.approx(expect, rel=1e-3)
