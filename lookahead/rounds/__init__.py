"""Round strategies: how one round of one problem turns the committed text into a `Proposal`.

Every strategy is a function ``(RoundContext, ProblemState) -> Proposal``; the reasoner
(`lookahead.loop`) picks one per problem from `ROUNDS` and commits what it proposes::

    ar         ar / sd: the target alone, one step a round           rounds/chain.py
    chain      lr / lr+sd: propose, expand, judge (γ fixed or adapted)  rounds/chain.py
    tree       width > 1: several sampled draft steps per depth      rounds/tree.py
    pipelined  pipeline: draft, target and verifier overlapped       rounds/pipelined.py

The state they share (`ProblemState`, `Proposal`, `RoundContext`) is in `lookahead.rounds.state`.

Example:
    >>> sorted(ROUNDS)
    ['ar', 'chain', 'pipelined', 'tree']
"""

from __future__ import annotations

from lookahead.rounds.chain import ar_round, chain_round
from lookahead.rounds.pipelined import pipelined_round
from lookahead.rounds.state import RoundStrategy
from lookahead.rounds.tree import tree_round

ROUNDS: dict[str, RoundStrategy] = {
    "ar": ar_round,
    "chain": chain_round,
    "tree": tree_round,
    "pipelined": pipelined_round,
}
"""The round strategies by kind (the table above)."""

__all__ = ["ROUNDS"]
