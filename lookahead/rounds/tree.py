"""Sequential rounds over a tree of draft steps (``width`` w > 1, sampled drafts).

As the reference's tree does, every node (the committed text P, then P + a drafted path) gets w
draft steps sampled from it (repeats dropped), down to depth γ::

    propose : w steps from P; w steps from each P + d^(j); ... (w + w^2 + ... + w^γ at most)
    expand  : t(node) = target(node) for the root and every node, ONE batched call
    judge   : every child step against its parent's target step, one verifier call
    commit  : from P, follow the first accepted child while there is one; then its target step

Any accepted step equals (exact verifier) the target's own step from the same prefix, so greedy
targets still commit ``ar``'s text; a round accepts a depth when ANY of its w samples matches.
The round hands the reasoner the accepted path as a chain round's `Proposal`.

Example:
    >>> proposal = tree_round(context, state)      # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lookahead.rounds.state import ProblemState, Proposal, RoundContext
from lookahead.types import Completion, Verdict

Node = tuple[str, ...]
"""A path of draft steps from the committed text P (``()`` is P itself)."""


@dataclass
class Tree:
    """The draft steps of one tree round, by depth."""

    levels: list[list[Node]] = field(default_factory=lambda: [[()]])  # [depth] -> the nodes at that depth
    children: dict[Node, list[Node]] = field(default_factory=dict)  # node -> its distinct complete children

    @property
    def nodes(self) -> list[Node]:
        return [node for level in self.levels for node in level]


def tree_round(context: RoundContext, state: ProblemState) -> Proposal:
    """One round over a tree of draft steps: the accepted path's draft steps, its target steps and
    verdicts, as a chain round's `Proposal`.

    The proposal ends with the first child of the last node reached and that child's (rejecting)
    verdict, so the stats count the depth that failed.
    """
    gamma = state.config.gamma
    state.stats.observe_gamma(gamma)
    tree = propose_tree(context, state, gamma)
    rows = expand_tree(context, state, tree.nodes)
    verdict_of = judge_tree(context, state, tree, rows)
    return accepted_path(tree, rows, verdict_of)


def propose_tree(context: RoundContext, state: ProblemState, gamma: int) -> Tree:
    """Sample w draft steps from each node, level by level, down to depth γ.

    Repeats and incomplete steps are dropped; a node past the budget, or whose last step states
    the final answer, gets no children.
    """
    tree = Tree()
    start = time.perf_counter()
    for _ in range(gamma):
        level: list[Node] = []
        for node in tree.levels[-1]:
            if node and state.states_answer(node[-1]):
                continue  # the problem ends at this node if its path is accepted
            left = state.tokens_left(context.target, "".join(node))
            if left <= 0:
                continue
            kids = tree.children.setdefault(node, [])
            for _ in range(state.config.width):
                step = context.draft_step(state, state.completion + "".join(node), left)
                if step is not None and node + (step,) not in kids:
                    kids.append(node + (step,))
            level.extend(kids)
        if not level:
            break
        tree.levels.append(level)
    state.stats.draft_s += time.perf_counter() - start
    return tree


def expand_tree(context: RoundContext, state: ProblemState, nodes: list[Node]) -> dict[Node, Completion]:
    """The target's step from every node, one batched call (expand's rules: no row past the
    budget, none after a leaf that states the final answer)."""
    inner = {node[:-1] for node in nodes if node}
    rows: list[tuple[str, int]] = []  # (drafted text after P, tokens left there)
    keys: list[Node] = []
    for node in nodes:
        left = state.tokens_left(context.target, "".join(node))
        leaf_answers = node and node not in inner and state.states_answer(node[-1])
        if left <= 0 or leaf_answers:
            continue
        rows.append(("".join(node), left))
        keys.append(node)
    return dict(zip(keys, context.target_steps(state, rows), strict=True))  # one target step per row


def judge_tree(
    context: RoundContext, state: ProblemState, tree: Tree, rows: dict[Node, Completion]
) -> dict[Node, Verdict]:
    """Every child step against its parent's target step, one verifier call; verdicts by child."""
    pairs = [(parent, child) for parent in tree.nodes for child in tree.children.get(parent, []) if parent in rows]
    if not pairs:
        return {}
    text = state.judge_context()
    verdicts = context.verify(
        state,
        [text + "".join(parent) for parent, _ in pairs],
        [child[-1] for _, child in pairs],
        [rows[parent] for parent, _ in pairs],
    )
    return {child: v for (_, child), v in zip(pairs, verdicts, strict=True)}  # one verdict per pair


def accepted_path(tree: Tree, rows: dict[Node, Completion], verdict_of: dict[Node, Verdict]) -> Proposal:
    """From P, follow the first accepted child (its parent's target step ended on the delimiter)
    while there is one; the path as a `Proposal`, ending with the depth that failed, if judged."""
    node: Node = ()
    targets: list[Completion] = []
    verdicts: list[Verdict] = []
    drafts: list[str] = []
    while node in rows:
        targets.append(rows[node])
        kids = [c for c in tree.children.get(node, []) if c in verdict_of]
        chosen = next((c for c in kids if verdict_of[c].accepted and rows[node].finish_reason == "stop"), None)
        if chosen is None:
            if kids:  # the depth that failed: its first sample and the verdict rejecting it
                drafts.append(kids[0][-1])
                verdicts.append(verdict_of[kids[0]])
            break
        drafts.append(chosen[-1])
        verdicts.append(verdict_of[chosen])
        node = chosen
    return Proposal(drafts, targets, verdicts)
