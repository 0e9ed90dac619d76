"""The adaptive-γ policy under measurement noise (a loaded machine)."""

from __future__ import annotations

from lookahead.adaptive import AdaptiveGamma


def test_a_noisy_unit_never_makes_two_rows_cheaper_than_one():
    """Guards bench-default: a slow 1-row call (helpers' tests on the same 2 cores) made b(2) = 0.91,
    so γ = 1 looked nearly free and adaptive lr fell to 0.81x of ar; b(k) is never below 1."""
    policy = AdaptiveGamma(max_gamma=1)
    policy.observe(1, 0, [False], 0.01, 1.0, 2, 0.0, draft_tokens=10, target_tokens=20)  # 2 rows: 0.1 s/token
    policy.observe(0, 0, [], 0.0, 2.0, 1, 0.0, target_tokens=10)  # 1 row, slowed: 0.2 s/token
    snapshot = policy.snapshot()
    assert snapshot["batch_cost"][2] == 1.0  # measured 0.5: clamped
    alpha, c = snapshot["alpha"][0], snapshot["c"]
    ar, gamma1 = snapshot["predicted_speedup"]
    assert gamma1 <= (1 + alpha) / (c + 1.0) + 1e-3  # the γ = 1 round pays at least one full target step (snapshot rounds to 4 places)


def test_probes_that_cost_more_than_the_model_says_come_less_often():
    """Guards bench-default: probes cost about twice the model's c + b(2) - 1 + v (a 2-row call
    waits for its longer row), so the 2% probe budget was spent twice over; the interval now
    follows the probes' measured cost."""
    policy = AdaptiveGamma(max_gamma=1)
    for _ in range(12):  # drafts never accepted: c = 0.1, b(2) = 1.2, ar round 1 s
        policy.observe(1, 0, [False], 0.1, 1.2, 2, 0.0, draft_tokens=10, target_tokens=20)
        policy.observe(0, 0, [], 0.0, 1.0, 1, 0.0, target_tokens=10)
    modelled = policy.snapshot()["probe_interval"]
    assert modelled <= 20  # ceil(0.3 / 0.02) = 15 ar rounds per probe
    while policy.choose() == 0:
        pass  # the ar rounds before the next probe
    policy.observe(1, 0, [False], 0.1, 2.9, 2, 0.0, draft_tokens=10, target_tokens=20)  # the probe: 3 s
    assert policy.snapshot()["probe_interval"] >= 100  # extra 2.0 ar rounds / 2% (then doubled)


def test_failed_probes_lengthen_the_interval_at_most_fourfold():
    """Found by `lookahead simulate` (paper profile, α = 0.5): unlucky early probes doubled the
    interval without bound (to 1024 rounds), so the estimate never recovered and γ stayed 0 where
    γ = 1 pays. The backoff stops at 4x the budget's interval; an accepted probe shortens it again."""
    policy = AdaptiveGamma(max_gamma=1)
    policy.observe(1, 0, [False], 0.1, 1.2, 2, 0.0, draft_tokens=10, target_tokens=20)  # warm-up: costs known
    policy.observe(0, 0, [], 0.0, 1.0, 1, 0.0, target_tokens=10)
    base = policy.snapshot()["probe_interval"]  # the budget's interval: 16 ar rounds here
    lengths = []
    for _ in range(8):  # eight rounds at γ = 1 in a row, none accepted
        while policy.choose() == 0:
            policy.observe(0, 0, [], 0.0, 1.0, 1, 0.0, target_tokens=10)
        policy.observe(1, 0, [False], 0.1, 1.2, 2, 0.0, draft_tokens=10, target_tokens=20)
        lengths.append(policy.snapshot()["probe_interval"])
    assert lengths[-1] == 4 * base and max(lengths) == 4 * base  # uncapped: 2**7 x base
    while policy.choose() == 0:
        policy.observe(0, 0, [], 0.0, 1.0, 1, 0.0, target_tokens=10)
    policy.observe(1, 1, [True, False], 0.1, 1.2, 2, 0.0, draft_tokens=10, target_tokens=20)  # accepted
    assert policy.snapshot()["probe_interval"] == 2 * base
