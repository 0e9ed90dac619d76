"""Peer baselines (`lookahead.eval.peers`) and their runs in the eval harness.

The tiny models here use a character-level tokenizer (`train_tokenizer(1)`: no merges, one token
per character), so re-tokenizing text never changes its tokens and a step delimiter always ends
on a token boundary: the one place where our step-by-step loop and a continuous decoder may part
(see the peers module docstring) cannot, and greedy ``hf-ar`` must write exactly our ``ar`` text.
"""

from __future__ import annotations

import re
import sys

import pytest

from lookahead import LookaheadReasoner, config_from_dict
from lookahead.config import load_config
from lookahead.errors import ConfigError
from lookahead.eval import harness as h
from lookahead.eval.peers import LLAMACPP_HINT, PeerSet, StepStopRule, create_peer
from lookahead.eval.report import summarize
from lookahead.eval.tasks import Problem
from lookahead.steps import split_steps

from tiny import tiny_llama, train_tokenizer

QUESTIONS = ["Step 1: add", "A short story about a cat", "The quick brown fox"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Target (seed 0), a different draft (seed 1) and a twin of the target (seed 0, its own copy)
    on disk, sharing a char-level tokenizer."""
    root = tmp_path_factory.mktemp("peer-models")
    tok = train_tokenizer(1)
    for name, seed in (("target", 0), ("draft", 1), ("twin", 0)):
        tiny_llama(tok, seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


def tiny_cfg(models, draft="draft", **overrides):
    return config_from_dict(
        {
            "mode": "ar",
            "step_delimiter": " ",  # frequent in the tiny models' text: many steps
            "max_step_tokens": 7,  # and some steps capped by the step cap
            "max_total_tokens": 40,
            "stop_at_final_answer": False,
            "prompt_template": "{question}",
            "temperature": 0.0,
            "target": {"model": str(models / "target"), "pad_batches": False},
            "draft": {"model": str(models / draft), "pad_batches": False},
            **overrides,
        }
    )


def answer_rule_for(text, delimiter, step=2):
    """A final-answer pattern that first matches step ``step`` of ``text`` (a word new there)."""
    steps = split_steps(text, delimiter)
    assert len(steps) > step + 1, "the tiny model wrote too few steps for this test"
    words = [w for w in re.findall(r"[a-zA-Z]{2,}", steps[step]) if not any(w in s for s in steps[:step])]
    assert words, "no word new in that step"
    return re.escape(words[0]), "".join(steps[: step + 1])


# -- the stop rule, alone -------------------------------------------------------------------------
def test_step_stop_rule_fires_on_the_first_complete_answer_step_only():
    """Guards the stop rule: only complete steps count, several steps may complete at once, the
    cut is the end of the answering step, and a delimiter arriving in pieces still completes it."""
    rule = StepStopRule("\n\n", re.compile(r"answer is \d"))
    assert not rule.update("We add.\n\nThe answer is 7")  # answering step not complete yet
    assert not rule.update("We add.\n\nThe answer is 7.\n")  # half a delimiter
    assert rule.update("We add.\n\nThe answer is 7.\n\nMore text.\n\n")
    assert rule.cut == len("We add.\n\nThe answer is 7.\n\n")
    several = StepStopRule("\n\n", re.compile("boxed"))
    assert several.update("a\n\nb\n\n\\boxed{1}\n\nc\n\n\\boxed{2}\n\n")
    assert several.cut == len("a\n\nb\n\n\\boxed{1}\n\n")
    never = StepStopRule("\n\n", None)
    assert not never.update("The answer is 7.\n\n") and not never.trailing_step_answers("answer is 7")
    trailing = StepStopRule("\n\n", re.compile(r"answer is \d"))
    assert not trailing.update("x\n\nThe answer is 7") and trailing.trailing_step_answers("x\n\nThe answer is 7")


# -- peers against our loop ----------------------------------------------------------------------
def test_hf_ar_writes_exactly_our_ar_text(models):
    """Guards fairness of the sanity peer: same prompt, budget, greedy decoding and decoding of the
    text as our ar (multi-step, with steps capped by max_step_tokens, ending at the budget)."""
    cfg = tiny_cfg(models)
    with LookaheadReasoner.from_config(cfg) as reasoner, PeerSet(cfg) as peers:
        for question in QUESTIONS:
            ours = reasoner.generate(question, mode="ar")
            peer = peers.get("hf-ar").generate(question)
            assert peer.text == ours.text and peer.text
            assert (peer.completion_tokens, peer.prompt_tokens) == (ours.completion_tokens, ours.prompt_tokens)
            assert peer.finish_reason == ours.finish_reason == "length"
            assert peer.mode == "peer:hf-ar" and peer.rounds == len(split_steps(peer.text, " "))


def test_stop_rule_fires_at_the_final_answer_step_like_our_loop(models):
    """Guards THE SAME STOP RULE: every transformers peer stops after the first complete step that
    states the final answer, cuts the text there, and says finish 'answer', exactly as our ar."""
    base = tiny_cfg(models, max_step_tokens=100)
    with PeerSet(base) as peers:
        full = peers.get("hf-ar").generate(QUESTIONS[0]).text
    pattern, expected = answer_rule_for(full, " ")
    cfg = tiny_cfg(models, max_step_tokens=100, stop_at_final_answer=True, final_answer_pattern=pattern)
    with LookaheadReasoner.from_config(cfg) as reasoner, PeerSet(cfg) as peers:
        ours = reasoner.generate(QUESTIONS[0], mode="ar")
        assert (ours.text, ours.finish_reason) == (expected, "answer")
        for name in ("hf-ar", "hf-assisted", "hf-prompt-lookup"):
            result = peers.get(name).generate(QUESTIONS[0])
            assert (result.text, result.finish_reason) == (expected, "answer"), name
            assert result.completion_tokens == ours.completion_tokens


def test_assisted_and_prompt_lookup_are_greedy_lossless_and_count_acceptance(models):
    """Guards the speculation peers: greedy output equals hf-ar's; token acceptance counts follow
    lookahead.stats (accepted <= proposed, length = (accepted + passes) / passes); a draft equal
    to the target gets its proposals accepted, and the draft's time is reported apart."""
    cfg = tiny_cfg(models)
    same = tiny_cfg(models, draft="twin")
    with PeerSet(cfg) as peers, PeerSet(same) as same_peers:
        for question in QUESTIONS[:2]:
            reference = peers.get("hf-ar").generate(question)
            assert reference.stats["spec_verify_passes"] == 0  # no speculation, as our ar
            for result in (
                peers.get("hf-assisted").generate(question),
                peers.get("hf-prompt-lookup", {"prompt_lookup_num_tokens": 3}).generate(question),
                same_peers.get("hf-assisted").generate(question),
            ):
                s = result.stats
                assert result.text == reference.text
                assert 0 <= s["spec_accepted_tokens"] <= s["spec_draft_tokens"] and s["spec_verify_passes"] > 0
                expected = (s["spec_accepted_tokens"] + s["spec_verify_passes"]) / s["spec_verify_passes"]
                assert s["token_acceptance_length"] == pytest.approx(expected, abs=1e-4)
            assert result.stats["draft_s"] > 0 and result.stats["token_acceptance_length"] > 2  # draft == target
            assert s["spec_accepted_tokens"] == s["spec_draft_tokens"]  # the twin proposes the target's own tokens


# -- the harness ---------------------------------------------------------------------------------
def test_peer_runs_are_recorded_summarized_and_resumed(models, tmp_path):
    """Guards the harness integration: peer runs get records (mode peer:NAME, spec counts), keep
    the per-problem rotation, get a speedup vs ar like any run, and a resume runs nothing twice."""
    cfg = tiny_cfg(models)
    problems = [Problem(i, i + 1, q, "12", "#### 12") for i, q in enumerate(QUESTIONS)]
    runs = h.parse_run_specs("ar,peer:hf-ar,peer:hf-assisted,peer:hf-prompt-lookup[prompt_lookup_num_tokens=5]", cfg)
    assert runs[3].peer == "hf-prompt-lookup" and runs[3].engine_overrides() == {}
    assert h.reasoner_mode(runs) == "ar"  # peers never decide which models the reasoner loads
    jobs = h.plan_jobs(problems, runs, 1, cfg, "tiny")
    store = h.RecordStore(tmp_path / "records.jsonl")
    with LookaheadReasoner.from_config(cfg) as reasoner:
        h.run_all(reasoner, jobs, store)
    records = store.records
    assert len(records) == 12 and all(r["status"] == "ok" for r in records)
    assert [r["run"] for r in records[:4]] == [r.label for r in runs]
    assert records[4]["run"] == "peer:hf-ar"  # problem 1 starts with the second run
    by_run = {r.label: [x for x in records if x["run"] == r.label] for r in runs}
    assert {x["mode"] for x in by_run["peer:hf-assisted"]} == {"peer:hf-assisted"}
    assert [x["completion"] for x in by_run["ar"]] == [x["completion"] for x in by_run["peer:hf-ar"]]
    assert all(x["spec"]["spec_verify_passes"] > 0 for x in by_run["peer:hf-assisted"])
    lookup = by_run["peer:hf-prompt-lookup[prompt_lookup_num_tokens=5]"]
    assert lookup[0]["overrides"] == {"prompt_lookup_num_tokens": 5}
    summary = summarize(records, runs, {})
    peer = next(r for r in summary["runs"] if r["label"] == "peer:hf-assisted")
    assert peer["speedup"] is not None and peer["agreement_with_ar"] == 1.0 and peer["step_acceptance"] is None
    assert peer["token_speculation"]["spec_verify_passes"] > 0 and not peer["fairness_warnings"]
    reopened = h.RecordStore(tmp_path / "records.jsonl")
    assert h.plan_jobs(problems, runs, 1, cfg, "tiny", done=reopened.keys) == []


def test_peer_that_cannot_load_becomes_an_error_row(models):
    """A transformers peer on the fake backend, or assisted generation with the target as its own
    draft, is a user mistake: an error record naming the key to fix."""
    cfg = load_config("tiny")
    run = h.parse_run_specs("peer:hf-ar", cfg)[0]
    job = h.Job(Problem(0, 1, "What is 2+2?", "4", "4"), run, 0, None, "t")
    with LookaheadReasoner.from_config(cfg) as reasoner:
        record = h.execute_job(reasoner, job)
    assert record["status"] == "error" and "target.backend" in record["error"] and record["mode"] == "peer:hf-ar"
    with pytest.raises(ConfigError, match="draft.model names the target's own model"):
        create_peer("hf-assisted", tiny_cfg(models, draft="target"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ar,peer:vllm", r"peer 'vllm' is unknown; choose one of peer:hf-ar, peer:hf-assisted"),
        ("peer:hf-prompt-lookup[prompt_lookup_num_tokens=0]", "prompt_lookup_num_tokens must be >= 1"),
        ("peer:hf-prompt-lookup[prompt_lookup_num_tokens=many]", "must be an integer"),
        ("peer:hf-ar[bogus=1]", r"unknown config key 'bogus'.*options of peer:hf-ar: none"),
        ("turbo", "or a peer: peer:hf-ar"),
    ],
)
def test_bad_peer_specs_are_config_errors(spec, message):
    """Every bad peer run is a ConfigError naming the run and what to write instead."""
    with pytest.raises(ConfigError, match=message):
        h.parse_run_specs(spec, load_config("tiny"))


def test_missing_llama_cpp_says_how_to_install_it(monkeypatch, models):
    """Without llama-cpp-python the llama.cpp peers fail up front with the pip command."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    with pytest.raises(ConfigError, match=re.escape(LLAMACPP_HINT)):
        h.parse_run_specs("ar,peer:llamacpp", load_config("tiny"))
    with pytest.raises(ConfigError, match=re.escape(LLAMACPP_HINT)):
        create_peer("llamacpp-lookup", tiny_cfg(models), {"num_pred_tokens": 4})


# -- the embedded model (slow) -------------------------------------------------------------------
@pytest.mark.slow
def test_peers_on_the_embedded_model():
    """SmolLM2 (greedy, 96 tokens): hf-ar writes our ar's first step, token for token; prompt
    lookup writes hf-ar's text. (After the first step the texts part: our loop re-tokenizes the
    committed text, and SmolLM2's tokenizer turns a trailing "\n\n" into one token where the
    model wrote two -- see the peers module docstring.)"""
    cfg = load_config("default", ["max_total_tokens=96"])
    question = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell in all?"
    with LookaheadReasoner.from_config(cfg) as reasoner, PeerSet(cfg) as peers:
        ours = reasoner.generate(question, mode="ar")
        hf_ar = peers.get("hf-ar").generate(question)
        lookup = peers.get("hf-prompt-lookup").generate(question)
    assert split_steps(hf_ar.text, cfg.step_delimiter)[0] == ours.steps[0].text
    assert hf_ar.prompt_tokens == ours.prompt_tokens and 0 < hf_ar.completion_tokens <= 96
    assert lookup.text == hf_ar.text and lookup.stats["spec_verify_passes"] > 0


@pytest.mark.slow
def test_llama_cpp_peers_on_the_embedded_gguf():
    """llama.cpp (quantized weights: its own text) answers under the same stop rule and budget."""
    pytest.importorskip("llama_cpp")
    cfg = load_config("default", ["max_total_tokens=96"])
    with PeerSet(cfg) as peers:
        for name in ("llamacpp", "llamacpp-lookup"):
            result = peers.get(name).generate("What is 12 + 30? Answer briefly.")
            assert result.text and 0 < result.completion_tokens <= 96 + 2
            assert result.finish_reason in ("answer", "eos", "length") and result.stats["spec_verify_passes"] is None


def test_a_llama_cpp_failure_on_one_problem_is_that_problems_peer_error(models):
    """llama-cpp-python raised ValueError in the middle of a bench (its prompt-lookup path overran a
    buffer) and the traceback ended the whole run; it is now a PeerError, which the harness turns
    into that problem's error record, and the peer starts every problem from a reset state."""
    from lookahead.engines.hf import HFEngine
    from lookahead.errors import PeerError
    from lookahead.eval.peers import LlamaCppPeer

    class Failing:
        resets = 0

        def reset(self):
            self.resets += 1

        def tokenize(self, text, add_bos=False, special=True):
            return list(range(5))

        def n_ctx(self):
            return 4096

        def create_completion(self, ids, **kwargs):
            def stream():
                yield {"choices": [{"text": "Step one", "finish_reason": None}]}
                raise ValueError("could not broadcast input array from shape (540672,) into shape (294912,)")
            return stream()

    cfg = tiny_cfg(models)
    peer = LlamaCppPeer.__new__(LlamaCppPeer)
    peer.name, peer.config, peer.options, peer.llm = "llamacpp-lookup", cfg, {}, Failing()
    peer.target = HFEngine.from_config(cfg.target)
    with pytest.raises(PeerError, match="llamacpp-lookup.*could not broadcast"):
        peer.generate("What is 1 + 1?")
    assert peer.llm.resets == 1
