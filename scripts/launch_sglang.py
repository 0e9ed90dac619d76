"""Start the SGLang servers a GPU preset points at (target, draft, LLM judge), wait until healthy.

A GPU preset (``lookahead/configs/gpu-*.yaml``) names, for every model, a ``url`` and
``options``. The options are SGLang server arguments (`ServerArgs` field names, e.g. ``tp_size``,
``mem_fraction_static``, ``base_gpu_id``, ``speculative_algorithm``); this script turns each into
its ``--flag value`` (``tp_size: 2`` -> ``--tp-size 2``; ``true`` -> bare flag; ``false``/null ->
left out; a list -> the flag followed by every item) and runs

    python -m sglang.launch_server --model-path MODEL --host HOST --port PORT [flags...]

for the target, the draft and the judge (the preset's ``verifier.options.engine``, an
OpenAI-compatible engine: SGLang serves ``/v1/completions`` too). Client-only option keys
(``tokenizer``, ``retry_backoff_s``, ``max_concurrency``, ``top_logprobs``) are not passed on. Servers
start one after another, each waiting for ``GET /health``, so processes sharing a GPU see each
other's memory when they size their KV cache. Two roles with the same url start once. Flag names
follow SGLang's ``docs/advanced_features/server_arguments.md`` and ``speculative_decoding.md``
(``--speculative-algorithm EAGLE3|NGRAM|STANDALONE``, ``--speculative-draft-model-path``,
``--speculative-num-steps``, ``--speculative-eagle-topk``, ``--speculative-num-draft-tokens``).

Logs go to ``--log-dir`` (default ``./sglang-logs``); Ctrl-C stops every server it started
(``--detach`` leaves them running and exits once all are healthy). The last line printed is one
JSON object: ``{"servers": [{"role", "url", "model", "command", "pid"}], "dry_run": bool}``.

Example:
    python scripts/launch_sglang.py --preset gpu-qwen3-32b --dry-run
    python scripts/launch_sglang.py --preset gpu-qwen3-32b --only target,draft --detach
    lookahead solve --config gpu-qwen3-32b "What is 17 * 23?"
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lookahead.config import PRESETS_DIR, preset_names  # noqa: E402
from lookahead.engines.http import server_args  # noqa: E402
from lookahead.errors import ConfigError, LookaheadError  # noqa: E402

ROLES = ("target", "draft", "judge")


@dataclass
class ServerPlan:
    """One SGLang server to start."""

    role: str  # "target", "draft" or "judge" (or "target+draft" when they share a url)
    url: str  # base URL the engines will call, e.g. http://127.0.0.1:30000
    model: str  # --model-path
    command: list[str]  # the full command line


def read_preset(source: str) -> tuple[Path, dict[str, Any]]:
    """The raw mapping of a preset name or YAML path (no validation of unrelated sections)."""
    path = Path(source)
    if not path.suffix and not path.exists():
        path = PRESETS_DIR / f"{source}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset {source!r} is neither a YAML file nor a preset; presets: {', '.join(preset_names())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    return path, data


def engine_sections(path: Path, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{role: engine mapping}`` for the roles served by an HTTP server in this preset."""
    sections = {"target": data.get("target"), "draft": data.get("draft")}
    verifier = data.get("verifier")
    if isinstance(verifier, dict):
        sections["judge"] = ((verifier.get("options") or {}).get("engine"))
    out = {}
    for role, section in sections.items():
        if not isinstance(section, dict) or not section.get("url"):
            continue
        if section.get("backend") not in ("sglang", "openai"):
            raise ConfigError(
                f"{path}: {role}.backend is {section.get('backend')!r}; only sglang/openai engines with a url run on a server"
            )
        if not section.get("model"):
            raise ConfigError(f"{path}: {role}.model is empty; give the model path or hub id to serve")
        out[role] = section
    return out


def to_flags(args: dict[str, Any]) -> list[str]:
    """SGLang server arguments -> command-line flags (see the module docstring)."""
    flags: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            flags.append(flag)
        elif isinstance(value, (list, tuple)):
            flags += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def plan_servers(source: str, python: str, only: list[str] | None = None) -> list[ServerPlan]:
    """The servers to start for a preset, in start order (target, draft, judge)."""
    path, data = read_preset(source)
    plans: dict[str, ServerPlan] = {}
    for role, section in engine_sections(path, data).items():
        if only and role not in only:
            continue
        url = str(section["url"]).rstrip("/")
        url = url.removesuffix("/v1")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
            raise ConfigError(f"{path}: {role}.url {url!r} must look like http://HOST:PORT")
        if url in plans:
            plans[url].role += f"+{role}"
            continue
        command = [python, "-m", "sglang.launch_server", "--model-path", str(section["model"]),
                   "--host", parsed.hostname, "--port", str(parsed.port)]
        if section.get("api_key"):
            command += ["--api-key", str(section["api_key"])]
        command += to_flags(server_args(dict(section.get("options") or {})))
        plans[url] = ServerPlan(role, url, str(section["model"]), command)
    if not plans:
        raise ConfigError(f"{path} names no sglang/openai engine with a url; nothing to launch")
    return list(plans.values())


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(plan: ServerPlan, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""
            raise LookaheadError(f"the {plan.role} server exited with code {process.returncode}; log {log}:\n{tail}")
        if healthy(plan.url):
            return
        time.sleep(2.0)
    raise LookaheadError(f"the {plan.role} server at {plan.url} was not healthy after {timeout_s:g} s; see {log}")


def announce(plans: list[ServerPlan], dry_run: bool) -> list[dict[str, Any]]:
    """Print each planned command; return the summary entries (``pid`` filled in by `serve`).
    A dry run also prints the summary JSON, its last line."""
    for plan in plans:
        print(f"# {plan.role}: {plan.model} at {plan.url}")
        print(shlex.join(plan.command))
    summary = [{"role": p.role, "url": p.url, "model": p.model, "command": shlex.join(p.command), "pid": None} for p in plans]
    if dry_run:
        print(json.dumps({"servers": summary, "dry_run": True}))
    return summary


def serve(plans: list[ServerPlan], summary: list[dict[str, Any]], log_dir: Path, timeout_s: float, detach: bool) -> int:
    """Start every planned server (one after another, each until healthy; a url that already
    answers is left alone), print the summary JSON, then keep them running until Ctrl-C or one
    exits (``detach``: return at once and leave them running). Stops what it started on the way out."""
    log_dir.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []
    keep_running = False  # True only when --detach and every server came up
    try:
        for plan, entry in zip(plans, summary, strict=False):
            if healthy(plan.url):
                print(f"{plan.role}: a server already answers at {plan.url}; not starting another")
                continue
            log = log_dir / f"{plan.role.replace('+', '-')}.log"
            with log.open("w") as handle:
                process = subprocess.Popen(plan.command, stdout=handle, stderr=subprocess.STDOUT)
            processes.append(process)
            entry["pid"] = process.pid
            print(f"{plan.role}: started pid {process.pid}, log {log}; waiting for {plan.url}/health ...")
            wait_healthy(plan, process, log, timeout_s)
            print(f"{plan.role}: ready at {plan.url}")
        print(json.dumps({"servers": summary, "dry_run": False}))
        if detach:
            keep_running = True
            return 0
        print("servers running; Ctrl-C stops them")
        while all(p.poll() is None for p in processes):
            time.sleep(5.0)
        print("a server exited; stopping the others", file=sys.stderr)
        return 1
    except LookaheadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if not keep_running:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def launcher_parser(doc: str, preset: str, roles: tuple[str, ...], timeout_s: float, log_dir: str) -> argparse.ArgumentParser:
    """The options every launcher script shares (``doc``: its module docstring)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module docstring (top of the script) for the preset's options.")  # fmt: skip
    parser.add_argument("--preset", default=preset, help="preset name in lookahead/configs or a YAML path")
    parser.add_argument("--only", default="", help=f"comma-separated roles to start: {','.join(roles)} (default all)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    parser.add_argument("--detach", action="store_true", help="exit once healthy, leaving the servers running")
    parser.add_argument("--timeout", type=float, default=timeout_s, help="seconds to wait for each server's /health")
    parser.add_argument("--log-dir", default=log_dir, help="folder for the servers' logs")
    return parser


def only_roles(only: str, roles: tuple[str, ...]) -> list[str] | None:
    """``--only`` as a list of roles (None: all); an unknown role is a ConfigError."""
    chosen = [r.strip() for r in only.split(",") if r.strip()] or None
    for role in chosen or []:
        if role not in roles:
            raise ConfigError(f"--only {role!r} is unknown; choose from {', '.join(roles)}")
    return chosen


def launch(args: argparse.Namespace, plan: Callable[[], list[ServerPlan]], check: Callable[[], str | None] = lambda: None) -> int:
    """A launcher's main after parsing: ``plan()`` the servers (a LookaheadError -> exit 2),
    print them, then (not a dry run) ``check()`` the machine (a message -> exit 2) and `serve`."""
    try:
        plans = plan()
    except LookaheadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = announce(plans, args.dry_run)
    if args.dry_run:
        return 0
    problem = check()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return serve(plans, summary, Path(args.log_dir), args.timeout, args.detach)


def main(argv: list[str] | None = None) -> int:
    parser = launcher_parser(__doc__, "gpu-qwen3-32b", ROLES, 1800.0, "sglang-logs")
    parser.add_argument("--python", default=sys.executable, help="Python interpreter that has sglang installed")
    args = parser.parse_args(argv)

    def no_sglang() -> str | None:
        if importlib.util.find_spec("sglang") is None and args.python == sys.executable:
            return ('sglang is not installed in this interpreter: pip install "lookahead[sglang]" on a CUDA machine '
                    "(or pass --python with an interpreter that has it)")  # fmt: skip
        return None

    return launch(args, lambda: plan_servers(args.preset, args.python, only_roles(args.only, ROLES)), no_sglang)

if __name__ == "__main__":
    sys.exit(main())
