"""Plan a deployment before renting it: ``lookahead simulate`` and ``lookahead profile``.

- `lookahead.simulate.profile`: the cost profile (YAML): engine costs, the judge's, the workloads'
  acceptance, each number with its source; load, check, save.
- `lookahead.simulate.modelled`: modelled engines and judge on a virtual clock (the texts a script,
  the durations the profile's cost model).
- `lookahead.simulate.run`: the real reasoner and scheduler over them, per run and load K; the
  report (JSON) and its figure.
- `lookahead.simulate.measure`: ``lookahead profile``: a profile measured from your own engines.

Example:
    >>> from lookahead.simulate import load_profile, simulate
    >>> report = simulate(load_profile("paper-qwen3-32b-h100"), runs="ar,lr", ks=[1])   # doctest: +SKIP
"""

from __future__ import annotations

from lookahead.simulate.profile import Profile, load_profile, profile_names, save_profile
from lookahead.simulate.run import simulate, write_report

__all__ = ["Profile", "load_profile", "profile_names", "save_profile", "simulate", "write_report"]
