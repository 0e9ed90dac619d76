"""Remote engines (SGLang native, OpenAI-compatible) against local mock servers; no GPU, no model.

The mock servers (tests/mock_servers.py) implement the documented request/response shapes and
continue texts from a FakeEngine script (one character = one token, id = ord(char)).
"""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from lookahead import LookaheadReasoner, config_from_dict
from lookahead.config import EngineConfig, SamplingParams
from lookahead.engines import create_engine
from lookahead.engines.http import RequestRejected, ServerUnavailable
from lookahead.engines.openai_compat import OpenAIEngine
from lookahead.engines.sglang import SGLangEngine, cut_after_stop
from lookahead.errors import ConfigError, ModelLoadError

from mock_servers import EOS_ID, MockServer

T = ["A1.\n\n", "A2 is longer.\n\n", "A3.\n\n", "Answer \\boxed{4}."]
P = "<user>\nq\n<assistant>\n"  # the FakeEngine chat shape the mock servers continue from
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>\n{{ m['content'] }}\n{% endfor %}{{ '<assistant>\\n' }}"
FAST = {"retry_backoff_s": 0.01}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A tiny local tokenizer folder with the FakeEngine-style chat template."""
    from tiny import train_tokenizer

    tok = train_tokenizer(300)
    tok.chat_template = CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture
def server():
    with MockServer(T) as srv:
        yield srv


def sglang(srv, **kw) -> SGLangEngine:
    options = {**FAST, **kw.pop("options", {})}
    return create_engine(EngineConfig(backend="sglang", model="mock-model", url=srv.url, options=options, **kw))


def openai(srv, **kw) -> OpenAIEngine:
    options = {**FAST, **kw.pop("options", {})}
    kw.setdefault("model", "mock-model")
    return create_engine(EngineConfig(backend="openai", url=srv.url, options=options, **kw))


def posts(srv, path):
    return [r for r in srv.requests if r["method"] == "POST" and r["path"] == path]


ROWS = [P, P + T[0], P + T[0] + T[1] + T[2]]
PARAMS = [SamplingParams(max_new_tokens=64), SamplingParams(max_new_tokens=3), SamplingParams(max_new_tokens=64)]


# -- SGLang ---------------------------------------------------------------------------------------


def test_sglang_batch_in_order_with_per_row_caps_stop_kept_and_finish_reasons(server):
    """One /generate per batch, rows in input order, per-row max_new_tokens, delimiter kept at the end."""
    engine = sglang(server)
    out = engine.generate(ROWS, PARAMS, stop=["\n\n"])
    assert [c.text for c in out] == [T[0], T[1][:3], T[3]]
    assert [c.finish_reason for c in out] == ["stop", "length", "eos"]
    assert [c.matched_stop for c in out] == ["\n\n", None, None]
    assert [c.completion_tokens for c in out] == [len(T[0]), 3, len(T[3])]
    assert out[1].cached_tokens == len(P)  # SGLang's cached_tokens is passed through
    [request] = posts(server, "/generate")
    body = request["body"]
    assert body["text"] == ROWS
    assert [sp["max_new_tokens"] for sp in body["sampling_params"]] == [64, 3, 64]
    assert all(sp["no_stop_trim"] and sp["stop"] == ["\n\n"] and sp["top_k"] == -1 for sp in body["sampling_params"])
    engine.shutdown()


def test_cut_after_stop_ends_text_on_the_first_delimiter():
    """A last token running past the delimiter is cut; a server that trimmed it gets it back."""
    assert cut_after_stop("a\n\n\nb", "\n\n") == "a\n\n"
    assert cut_after_stop("a", "\n\n") == "a\n\n"


def test_sglang_completion_mapping_of_dict_finish_reasons(server):
    """finish_reason dicts: matched str -> stop, matched token id -> eos, length, abort raises."""
    engine = sglang(server)
    meta = {"prompt_tokens": 3, "completion_tokens": 4}
    stop = engine._completion({"text": "ab\n\nc", "meta_info": {**meta, "finish_reason": {"type": "stop", "matched": "\n\n"}}}, 0.1)
    assert (stop.text, stop.finish_reason, stop.matched_stop) == ("ab\n\n", "stop", "\n\n")
    eos = engine._completion({"text": "ab", "meta_info": {**meta, "finish_reason": {"type": "stop", "matched": EOS_ID}}}, 0.1)
    assert (eos.text, eos.finish_reason) == ("ab", "eos")
    length = engine._completion({"text": "abcd", "meta_info": {**meta, "finish_reason": {"type": "length", "length": 4}}}, 0.1)
    assert length.finish_reason == "length"
    with pytest.raises(ServerUnavailable, match="aborted"):
        engine._completion({"text": "", "meta_info": {**meta, "finish_reason": {"type": "abort", "message": "oom"}}}, 0.1)


def test_sglang_spec_counts_from_verify_count_and_server_info():
    """spec_verify_ct -> accepted = completion - verify, drafted = verify * (num_draft_tokens - 1)."""
    with MockServer(T, spec_per_pass=3) as srv:  # server info says speculative_num_draft_tokens = 4
        engine = sglang(srv)
        [c] = engine.generate([P + T[0]], SamplingParams(max_new_tokens=64), stop=["\n\n"])
        verify = math.ceil(len(T[1]) / 3)
        assert c.spec_accepted_tokens == len(T[1]) - verify
        assert c.spec_draft_tokens == verify * 3
        # newer servers report the counts themselves: taken as they are
        direct = engine._completion({"text": "x", "meta_info": {
            "finish_reason": {"type": "length"}, "completion_tokens": 9, "spec_verify_ct": 3,
            "spec_draft_token_num": 12, "spec_accept_token_num": 5}}, 0.0)
        assert (direct.spec_draft_tokens, direct.spec_accepted_tokens) == (12, 5)


def test_sglang_spec_counts_stay_zero_when_draft_size_unknown(server):
    """Without speculative_num_draft_tokens anywhere, no made-up acceptance numbers."""
    engine = sglang(server)  # this mock reports speculative_num_draft_tokens = None
    c = engine._completion({"text": "x", "meta_info": {"finish_reason": {"type": "length"}, "completion_tokens": 9,
                                                       "spec_verify_ct": 3}}, 0.0)
    assert (c.spec_draft_tokens, c.spec_accepted_tokens) == (0, 0)


def test_sglang_clear_prefix_cache_flushes_the_server_and_says_when_refused(server):
    """`clear_prefix_cache` posts SGLang's /flush_cache: the next call of a prompt seen before finds
    nothing cached; a refusal (requests still running: 400) is False, not an error."""
    engine = sglang(server)
    engine.generate([P], SamplingParams(max_new_tokens=4))
    assert engine.generate([P], SamplingParams(max_new_tokens=4))[0].cached_tokens > 0
    assert engine.clear_prefix_cache() is True
    assert posts(server, "/flush_cache")
    assert engine.generate([P], SamplingParams(max_new_tokens=4))[0].cached_tokens == 0
    server.busy = True
    assert engine.clear_prefix_cache() is False


def test_an_openai_engine_says_it_cleared_nothing(server):
    assert openai(server).clear_prefix_cache() is False
    assert not posts(server, "/flush_cache")


def test_sglang_next_token_logprobs_exact_for_every_candidate(server):
    """token_ids_logprob with the candidates' first tokens; max_new_tokens 1."""
    engine = sglang(server)
    [row] = engine.next_token_logprobs([P], ["A", "B", "x"])
    assert row["A"] == pytest.approx(math.log(0.9))
    assert row["x"] == pytest.approx(math.log(0.01))
    assert row["B"] == pytest.approx(math.log(1e-4))
    body = posts(server, "/generate")[-1]["body"]
    assert body["return_logprob"] is True and body["sampling_params"][0]["max_new_tokens"] == 1
    assert body["token_ids_logprob"] == [sorted({ord("A"), ord("B"), ord("x")})]


def test_tokenize_endpoint_fallback_and_clear_chat_error(server):
    """No local tokenizer: counts via /tokenize; format_chat fails with the fix in the message."""
    engine = sglang(server)
    assert engine.count_tokens("hello") == 5
    assert engine.context_length() == 4096
    assert posts(server, "/tokenize")
    with pytest.raises(ConfigError, match="options.tokenizer"):
        engine.format_chat([{"role": "user", "content": "q"}])


def test_local_tokenizer_used_for_counts_and_chat(server, tok_dir):
    """options.tokenizer: counts and chat rendering locally, no /tokenize round trips."""
    from transformers import AutoTokenizer

    engine = sglang(server, options={"tokenizer": tok_dir})
    local = AutoTokenizer.from_pretrained(tok_dir)
    text = "Step 2: multiply 3 by 4 to get 12."
    assert engine.count_tokens(text) == len(local(text, add_special_tokens=False).input_ids)
    assert engine.format_chat([{"role": "user", "content": "q"}]) == P
    assert not posts(server, "/tokenize")


def test_bad_tokenizer_option_is_a_config_error(server, tmp_path):
    with pytest.raises(ConfigError, match="options.tokenizer"):
        sglang(server, options={"tokenizer": str(tmp_path / "missing")})


# -- HTTP layer -------------------------------------------------------------------------------------


def test_retries_503_then_succeeds(server):
    """Two 503s, then an answer: the call succeeds after 3 tries."""
    engine = sglang(server)
    server.fail_next = [503, 503]
    [c] = engine.generate([P], SamplingParams(max_new_tokens=64), stop=["\n\n"])
    assert c.text == T[0]
    assert len(posts(server, "/generate")) == 3


def test_retries_exhausted_names_the_last_problem(server):
    engine = sglang(server, max_retries=1)
    server.fail_next = [503] * 5
    with pytest.raises(ServerUnavailable, match=r"after 2 tries: HTTP 503"):
        engine.generate([P], SamplingParams(max_new_tokens=8))


def test_unreachable_server_fails_fast_with_launch_hint():
    """Nothing listening: a clear error naming the URL and the launcher, within seconds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with pytest.raises(ServerUnavailable) as info:
        create_engine(EngineConfig(backend="sglang", model="m", url=url, timeout_s=1, max_retries=1, options=FAST))
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert f"cannot reach the SGLang server at {url} after 2 tries" in message
    assert "scripts/launch_sglang.py --preset" in message


def test_4xx_raises_at_once_with_the_server_message(server):
    """A 400 is our mistake: no retry, the server's own message in the error."""
    server.max_new_tokens_limit = 10
    engine = sglang(server)
    with pytest.raises(RequestRejected, match="exceeds this server's limit of 10"):
        engine.generate([P], SamplingParams(max_new_tokens=64))
    assert len(posts(server, "/generate")) == 1


def test_bearer_auth_from_config_and_env(monkeypatch):
    """api_key (or $LOOKAHEAD_API_KEY) is sent as a bearer token; a wrong key is rejected clearly."""
    with MockServer(T, api_key="s3cret") as srv:
        engine = sglang(srv, api_key="s3cret")
        assert engine.generate([P], SamplingParams(max_new_tokens=64), stop=["\n\n"])[0].text == T[0]
        assert posts(srv, "/generate")[-1]["headers"]["Authorization"] == "Bearer s3cret"
        monkeypatch.setenv("LOOKAHEAD_API_KEY", "s3cret")
        assert openai(srv).generate([P], SamplingParams(max_new_tokens=64), stop=["\n\n"])[0].text == T[0]
        monkeypatch.setenv("LOOKAHEAD_API_KEY", "wrong")
        with pytest.raises(RequestRejected, match="Invalid API key"):
            sglang(srv)


# -- OpenAI-compatible --------------------------------------------------------------------------------


def test_openai_one_request_per_prompt_stop_restored_and_usage_per_row(server):
    """vLLM-style stop_reason: the stripped delimiter comes back; EOS stays eos; usage per row."""
    engine = openai(server)
    out = engine.generate(ROWS, PARAMS, stop=["\n\n"])
    assert [c.text for c in out] == [T[0], T[1][:3], T[3]]
    assert [c.finish_reason for c in out] == ["stop", "length", "eos"]
    assert [c.completion_tokens for c in out] == [len(T[0]), 3, len(T[3])]
    assert [c.prompt_tokens for c in out] == [len(r) for r in ROWS]
    requests = posts(server, "/v1/completions")
    assert sorted(r["body"]["max_tokens"] for r in requests) == [3, 64, 64]
    assert all(r["body"]["model"] == "mock-model" and r["body"]["stop"] == ["\n\n"] for r in requests)


def test_openai_plain_server_single_stop_is_restored(tok_dir):
    """A server without stop_reason: with one stop string the match is unambiguous."""
    with MockServer(T, flavor="plain") as srv:
        [c] = openai(srv).generate([P + T[0]], SamplingParams(max_new_tokens=64), stop=["\n\n"])
        assert (c.text, c.finish_reason, c.matched_stop) == (T[1], "stop", "\n\n")


def test_openai_sends_seed_and_top_k_only_when_set(server):
    engine = openai(server)
    engine.generate([P], SamplingParams(max_new_tokens=8, seed=7, top_k=20), stop=["\n\n"])
    engine.generate([P], SamplingParams(max_new_tokens=8), stop=["\n\n"])
    first, second = (r["body"] for r in posts(server, "/v1/completions"))
    assert (first["seed"], first["top_k"]) == (7, 20)
    assert "seed" not in second and "top_k" not in second


def test_openai_next_token_logprobs_missing_candidate_is_minus_inf(server):
    """Top-list lookup by the candidate's leading token; absent from the top list -> -inf."""
    engine = openai(server)
    [row] = engine.next_token_logprobs([P], ["A1", "B", " "])
    assert row["A1"] == pytest.approx(math.log(0.9))
    assert row[" "] == pytest.approx(math.log(0.05))
    assert row["B"] == -math.inf
    body = posts(server, "/v1/completions")[-1]["body"]
    assert (body["max_tokens"], body["logprobs"]) == (1, 20)


def test_openai_model_auto_and_v1_suffix(server):
    engine = create_engine(EngineConfig(backend="openai", model="auto", url=server.url + "/v1/", options=FAST))
    assert engine.model == "mock-model" and engine.context_length() == 4096


def test_openai_wrong_model_name_is_rejected_with_message(server):
    engine = openai(server, model="other-model")
    with pytest.raises(RequestRejected, match="other-model"):
        engine.generate([P], SamplingParams(max_new_tokens=4))


# -- llama.cpp's server: its native /completion names the stop word ------------------------------------


def test_llamacpp_server_is_detected_and_eos_is_not_taken_for_the_delimiter():
    """owned_by llamacpp -> native /completion: a stop word is restored, an EOS stays an EOS (its
    /v1/completions could not tell them apart), a cap is a length; usage from the native fields."""
    with MockServer(T, flavor="llamacpp") as srv:
        engine = openai(srv)
        assert engine.api == "llamacpp" and engine.name.startswith("llamacpp:")
        assert engine.context_length() == 4096  # /props default_generation_settings.n_ctx
        out = engine.generate(ROWS, PARAMS, stop=["\n\n"])
        assert [c.text for c in out] == [T[0], T[1][:3], T[3]]
        assert [c.finish_reason for c in out] == ["stop", "length", "eos"]
        assert [c.matched_stop for c in out] == ["\n\n", None, None]
        assert [c.completion_tokens for c in out] == [len(T[0]), 3, len(T[3])]
        assert [c.prompt_tokens for c in out] == [len(r) for r in ROWS]
        requests = posts(srv, "/completion")
        assert not posts(srv, "/v1/completions") and len(requests) == 3
        body = requests[0]["body"]
        # llama.cpp's own top_k 40 / min_p 0.05 are switched off; the slot's KV cache is reused
        assert (body["top_k"], body["min_p"], body["cache_prompt"], body["stop"]) == (0, 0.0, True, ["\n\n"])
        assert sorted(r["body"]["n_predict"] for r in requests) == [3, 64, 64]
        again = engine.generate([ROWS[0]], PARAMS[0], stop=["\n\n"])[0]
        assert again.cached_tokens == len(ROWS[0])  # tokens_cached


def test_llamacpp_api_can_be_forced_and_a_bad_value_is_a_config_error():
    with MockServer(T, flavor="llamacpp") as srv:
        forced = create_engine(EngineConfig(backend="openai", model="mock-model", url=srv.url,
                                            options={**FAST, "api": "openai"}))
        assert forced.api == "openai"
        forced.generate([P], SamplingParams(max_new_tokens=8), stop=["\n\n"])
        assert posts(srv, "/v1/completions") and not posts(srv, "/completion")
    with MockServer(T) as srv:  # a vLLM-like server asked for the native route: it has none
        native = create_engine(EngineConfig(backend="openai", model="mock-model", url=srv.url,
                                            options={**FAST, "api": "llamacpp"}))
        with pytest.raises(RequestRejected, match="404|Not Found"):
            native.generate([P], SamplingParams(max_new_tokens=8), stop=["\n\n"])
    with pytest.raises(ConfigError, match="options.api 'grpc' is unknown"):
        create_engine(EngineConfig(backend="openai", model="m", url="http://127.0.0.1:9", options={"api": "grpc"}))


def test_lr_over_llamacpp_servers_matches_ar(tok_dir):
    """The whole loop over two llama.cpp-flavoured servers, pipelined: text equals ar's and the
    final EOS is an EOS (not a delimiter appended by guesswork)."""
    draft_steps = ["A1.\n\n", "B2.\n\n", "A3.\n\n", "Answer \\boxed{4}."]
    with MockServer(T, flavor="llamacpp") as target_srv, MockServer(draft_steps, flavor="llamacpp") as draft_srv:
        target = {"backend": "openai", "model": "mock-model", "url": target_srv.url, "options": {"tokenizer": tok_dir, **FAST}}
        cfg = _mock_pair_config(target_srv, draft_srv, tok_dir, pipeline=True, target=target)
        with LookaheadReasoner.from_config(cfg) as reasoner:
            lr = reasoner.generate("q")
            ar = reasoner.generate("q", mode="ar")
    assert lr.text == ar.text == "".join(T) and lr.accepted_steps >= 2
    assert lr.finish_reason == ar.finish_reason == "eos"
    assert posts(target_srv, "/completion") and not posts(target_srv, "/v1/completions")


def test_llama_cpp_peer_prompts_through_a_server_target(tok_dir):
    """With target.backend openai (lookahead over llama-server), a llama.cpp peer renders and counts
    its prompt with that engine's local tokenizer (no transformers target needed)."""
    from lookahead.eval.peers import _prepare, _prompt_engine

    with MockServer(T, flavor="llamacpp") as srv:
        cfg = config_from_dict({"max_total_tokens": 100, "target": {
            "backend": "openai", "model": "mock-model", "url": srv.url, "options": {"tokenizer": tok_dir, **FAST}}})
        engine = _prompt_engine(cfg.target, "llamacpp")
        try:
            prepared = _prepare(cfg, engine, "q")
        finally:
            engine.shutdown()
    assert prepared.prompt.startswith("<user>\nq\n") and prepared.prompt.endswith("<assistant>\n")  # its template
    assert prepared.prompt_tokens == engine.count_tokens(prepared.prompt) > 0
    assert prepared.token_limit == 100


def test_openai_needs_a_url():
    with pytest.raises(ConfigError, match="needs url"):
        create_engine(EngineConfig(backend="openai", model="m"))


# -- in-process SGLang, launcher, presets ---------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="sglang is installed here")
def test_in_process_without_sglang_names_the_extra():
    with pytest.raises(ModelLoadError, match=r'pip install "lookahead\[sglang\]"'):
        create_engine(EngineConfig(backend="sglang", model="Qwen/Qwen3-1.7B"))


def _launcher():
    spec = importlib.util.spec_from_file_location("launch_sglang", ROOT / "scripts" / "launch_sglang.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["launch_sglang"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_launcher_dry_run_prints_the_paper_servers(capsys):
    """--dry-run: one sglang.launch_server command per role with the preset's flags, JSON last."""
    launcher = _launcher()
    assert launcher.main(["--preset", "gpu-qwen3-32b", "--dry-run", "--python", "python"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["dry_run"] is True
    by_role = {s["role"]: s["command"] for s in summary["servers"]}
    assert set(by_role) == {"target", "draft", "judge"}
    assert by_role["target"].startswith("python -m sglang.launch_server --model-path Qwen/Qwen3-32B")
    assert "--port 30000" in by_role["target"] and "--tp-size 2" in by_role["target"]
    assert "--model-path Qwen/Qwen3-1.7B" in by_role["draft"] and "--port 30001" in by_role["draft"]
    assert "--model-path Qwen/Qwen2.5-7B-Instruct" in by_role["judge"]


def test_launcher_flags_and_shared_urls(tmp_path):
    """Flag spelling (bool/list/None) and one server for two roles on the same url."""
    launcher = _launcher()
    assert launcher.to_flags({"speculative_algorithm": "EAGLE3", "enable_torch_compile": True, "x": False,
                              "y": None, "cuda_graph_bs": [1, 2]}) == [
        "--speculative-algorithm", "EAGLE3", "--enable-torch-compile", "--cuda-graph-bs", "1", "2"]
    preset = tmp_path / "p.yaml"
    engine = {"backend": "sglang", "model": "m", "url": "http://127.0.0.1:31000",
              "options": {"tokenizer": "/tok", "tp_size": 1}}
    preset.write_text(yaml.safe_dump({"target": engine, "draft": engine}))
    [plan] = launcher.plan_servers(str(preset), "python")
    assert plan.role == "target+draft" and "--tokenizer" not in plan.command and "--tp-size" in plan.command
    assert launcher.main(["--preset", str(tmp_path / "nope.yaml"), "--dry-run"]) == 2


def _llamacpp_launcher():
    _launcher()  # launch_llamacpp imports its helpers from launch_sglang
    spec = importlib.util.spec_from_file_location("launch_llamacpp", ROOT / "scripts" / "launch_llamacpp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_llamacpp_launcher_dry_run_plans_both_servers(capsys):
    """The shipped preset: the embedded GGUF for the target with γ + 1 slots, the draft's GGUF,
    --alias = the preset's model name, client options (tokenizer, cache_prompt) not passed on."""
    launcher = _llamacpp_launcher()
    assert launcher.main(["--preset", "cpu-llamacpp", "--dry-run", "--server", "llama-server"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    by_role = {s["role"]: s["command"] for s in summary["servers"]}
    assert by_role["target"].startswith("llama-server -m ") and "SmolLM2-135M-Instruct.Q4_1.gguf" in by_role["target"]
    assert "--alias smollm2-135m-instruct" in by_role["target"] and "--port 8090" in by_role["target"]
    assert "--parallel 5" in by_role["target"] and "--tokenizer" not in by_role["target"]
    assert "smollm2-135m-gsm8k-draft-q8_0.gguf" in by_role["draft"] and "--port 8091" in by_role["draft"]
    from lookahead.config import load_config

    cfg = load_config("cpu-llamacpp")
    assert cfg.target.backend == cfg.draft.backend == "openai" and cfg.verifier.name == "exact"


def test_llamacpp_launcher_errors_name_the_fix(tmp_path, capsys, monkeypatch):
    launcher = _llamacpp_launcher()
    engine = {"backend": "openai", "model": "m", "url": "http://127.0.0.1:31000", "options": {"gguf": str(tmp_path / "x.gguf")}}
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"target": engine}))
    monkeypatch.delenv("LLAMA_SERVER", raising=False)
    assert launcher.main(["--preset", str(preset), "--server", str(tmp_path / "no-such-binary")]) == 2
    assert "llama-server not found" in capsys.readouterr().err
    assert launcher.main(["--preset", str(preset), "--server", sys.executable]) == 2
    assert "x.gguf does not exist; convert the model first" in capsys.readouterr().err
    preset.write_text(yaml.safe_dump({"target": engine, "draft": engine}))
    with pytest.raises(ConfigError, match="share http://127.0.0.1:31000"):
        launcher.plan_servers(str(preset), "llama-server", must_exist=False)


def test_llamacpp_launcher_warns_when_threads_exceed_cores():
    """Two servers whose threads (given, or llama.cpp's default of every core) exceed the cores get a
    warning naming the per-server count; within the cores, or a single server, none."""
    launcher = _llamacpp_launcher()

    def plan(*threads):
        flags = [[] if t is None else ["--threads", str(t)] for t in threads]
        return [launcher.ServerPlan(f"r{i}", f"http://h:{i}", "m.gguf", ["llama-server", *f]) for i, f in enumerate(flags)]

    assert "add up to 4 (2 + 2) on 2 cores" in launcher.thread_warning(plan(2, 2), 2)
    assert "at most 1 (threads: N)" in launcher.thread_warning(plan(2, 2), 2)
    assert "add up to 3 (1 + 2) on 2 cores" in launcher.thread_warning(plan(1, None), 2)
    assert launcher.thread_warning(plan(1, 1), 2) is None
    assert launcher.thread_warning(plan(None), 2) is None


def test_llamacpp_launcher_starts_a_server_and_detaches(tmp_path, capsys):
    """A stand-in llama-server (answers /health on --port) is started, waited for and left running."""
    import os
    import signal
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake = tmp_path / "llama-server"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys, http.server\n"
        "port = int(sys.argv[sys.argv.index('--port') + 1])\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'{}')\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()\n"
    )
    fake.chmod(0o755)
    (tmp_path / "t.gguf").write_bytes(b"GGUF")
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"target": {"backend": "openai", "model": "m", "url": f"http://127.0.0.1:{port}",
                                                 "options": {"gguf": str(tmp_path / "t.gguf"), "parallel": 3}}}))
    code = _llamacpp_launcher().main(
        ["--preset", str(preset), "--server", str(fake), "--detach", "--log-dir", str(tmp_path / "logs"), "--timeout", "60"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    [server] = summary["servers"]
    try:
        assert code == 0 and summary["dry_run"] is False
        assert server["pid"] and f"--port {port}" in server["command"] and "--parallel 3" in server["command"]
        assert (tmp_path / "logs" / "target.log").exists()
    finally:
        if server["pid"]:
            os.kill(server["pid"], signal.SIGTERM)


@pytest.mark.parametrize("preset", ["gpu-qwen3-32b", "gpu-qwen3-8b-1gpu"])
def test_gpu_presets_validate(preset):
    from lookahead.config import load_config

    cfg = load_config(preset)
    assert cfg.target.backend == cfg.draft.backend == "sglang"
    assert cfg.step_delimiter == "\n\n" and cfg.gamma == 4 and cfg.verifier.name == "llm_judge"


# -- the whole loop over remote engines -----------------------------------------------------------------


def test_lr_run_over_mock_servers_matches_ar(tok_dir):
    """LookaheadReasoner lr: SGLang target + OpenAI draft, exact verifier; text equals ar's and the
    target's script, drafts that agree are accepted, the one that differs falls back."""
    draft_steps = ["A1.\n\n", "B2.\n\n", "A3.\n\n", "Answer \\boxed{4}."]
    with MockServer(T) as target_srv, MockServer(draft_steps) as draft_srv:
        cfg = config_from_dict({
            "mode": "lr", "gamma": 2, "max_step_tokens": 64, "max_total_tokens": 400, "temperature": 0.0,
            "target": {"backend": "sglang", "model": "mock-model", "url": target_srv.url,
                       "options": {"tokenizer": tok_dir, **FAST}},
            "draft": {"backend": "openai", "model": "mock-model", "url": draft_srv.url,
                      "options": {"tokenizer": tok_dir, **FAST}},
            "verifier": {"name": "exact"},
        })
        with LookaheadReasoner.from_config(cfg) as reasoner:
            lr = reasoner.generate("q")
            ar = reasoner.generate("q", mode="ar")
    assert lr.text == ar.text == "".join(T)
    assert lr.accepted_steps >= 2 and lr.drafted_steps > lr.accepted_steps
    assert lr.finish_reason == ar.finish_reason == "eos"  # the last scripted step ends the sequence
    rejected = [s for s in lr.steps if s.draft_text == "B2.\n\n"]
    assert rejected and rejected[0].source == "target" and rejected[0].text == T[1]
    # target rows of a round travel in ONE /generate request
    assert any(len(r["body"]["text"]) > 1 for r in posts(target_srv, "/generate"))


def _mock_pair_config(target_srv, draft_srv, tok_dir, **overrides):
    return config_from_dict({
        "mode": "lr", "gamma": 2, "max_step_tokens": 64, "max_total_tokens": 400, "temperature": 0.0,
        "target": {"backend": "sglang", "model": "mock-model", "url": target_srv.url, "options": {"tokenizer": tok_dir, **FAST}},
        "draft": {"backend": "openai", "model": "mock-model", "url": draft_srv.url, "options": {"tokenizer": tok_dir, **FAST}},
        "verifier": {"name": "exact"},
        **overrides,
    })


def test_server_engines_take_concurrent_calls(server):
    """Over a server both engines accept overlapping calls (``thread_safe``): pipelined rounds and
    concurrency > 1 need no Ray pool in front of SGLang or an OpenAI-compatible server."""
    assert sglang(server).thread_safe and openai(server).thread_safe


def test_pipelined_lr_over_mock_servers_matches_ar_with_one_request_per_row(tok_dir):
    draft_steps = ["A1.\n\n", "B2.\n\n", "A3.\n\n", "Answer \\boxed{4}."]
    with MockServer(T) as target_srv, MockServer(draft_steps) as draft_srv:
        with LookaheadReasoner.from_config(_mock_pair_config(target_srv, draft_srv, tok_dir, pipeline=True)) as reasoner:
            lr = reasoner.generate("q")
            ar = reasoner.generate("q", mode="ar")
            workers = reasoner._target_workers()._max_workers
    assert lr.text == ar.text == "".join(T) and lr.accepted_steps >= 2
    assert workers > 1  # a thread-safe target: the rows of a round run at once
    # each target row is its own /generate request (the server batches them)
    assert all(len(r["body"]["text"]) == 1 for r in posts(target_srv, "/generate") if isinstance(r["body"]["text"], list))


def test_run_many_over_mock_servers_needs_no_pool(tok_dir):
    from lookahead.scheduler import Job, run_many

    with MockServer(T) as target_srv, MockServer(T) as draft_srv:
        with LookaheadReasoner.from_config(_mock_pair_config(target_srv, draft_srv, tok_dir)) as reasoner:
            outcomes = run_many(reasoner, [Job("q"), Job("q", mode="ar"), Job("q", overrides={"pipeline": True})], concurrency=3)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert {o.result.text for o in outcomes} == {"".join(T)}
