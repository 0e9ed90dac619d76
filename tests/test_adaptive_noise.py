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
