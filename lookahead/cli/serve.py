"""``lookahead serve``: the reasoner behind an OpenAI-compatible HTTP API (`lookahead.server`).

Example:
    lookahead serve --config tiny --port 8000
    LOOKAHEAD_API_KEY=secret lookahead serve --host 0.0.0.0 --max-concurrency 4
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lookahead.cli.common import (
    ConfigOpt,
    SetOpt,
    console,
    err_console,
    fail,
    finite_options,
    quiet_libraries,
)
from lookahead.errors import LookaheadError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def _settings(cfg: Any, port: int, log_level: str, **fields: Any) -> Any:
    """The validated `ServerSettings` (a mistake raises: `ValueError` or one of ours)."""
    from lookahead.server import ServerSettings, default_model_name

    if not 0 <= port <= 65535:
        raise fail(f"--port must be in 0..65535 (got {port})")
    if log_level not in LOG_LEVELS:
        raise fail(f"--log-level {log_level!r} is unknown; choose critical, error, warning, info or debug")
    fields["model_name"] = fields["model_name"] or default_model_name(cfg)
    return ServerSettings(**fields).validate()


def serve_command(
    config: ConfigOpt = "default",
    set_: SetOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; the default only accepts local clients.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="LOOKAHEAD_API_KEY", show_envvar=True, help="Require 'Authorization: Bearer KEY' (not on /health)."),
    ] = None,
    max_concurrency: Annotated[
        int, typer.Option(help="Requests running at once; their engine calls share batches.")
    ] = 8,
    max_queue: Annotated[
        int, typer.Option(help="Requests waiting for a running slot (first come, first served); more get 429.")
    ] = 64,
    timeout: Annotated[float, typer.Option(help="Seconds per request before it is cancelled with 504.")] = 300.0,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body in bytes; larger gets 413.")] = 1_048_576,
    model_name: Annotated[
        str | None, typer.Option(help="Name clients pass as `model` (default: the config's target.model).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical, error, warning, info, debug.")] = "info",
) -> None:
    """Serve the reasoner over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)."""
    finite_options(timeout=timeout)
    from lookahead.config import load_config
    from lookahead.loop import LookaheadReasoner
    from lookahead.server import create_app

    try:
        cfg = load_config(config, list(set_ or []))
        settings = _settings(cfg, port, log_level, model_name=model_name, api_key=api_key,
                             max_concurrency=max_concurrency, max_queue=max_queue, timeout_s=timeout,
                             max_body_bytes=max_body_bytes)
        quiet_libraries(cfg)
        with console.status("loading models..."):
            reasoner = LookaheadReasoner.from_config(cfg)
    except (LookaheadError, ValueError) as exc:  # ValueError: a ServerSettings check outside ConfigError
        raise fail(str(exc)) from None
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        err_console.print(f"[yellow]warning: binding {host} without --api-key: anyone who can reach it can use the model[/]")
    console.print(
        f"serving [bold]{settings.model_name}[/] (mode {cfg.mode}) at http://{host}:{port}/v1 · "
        f"{settings.max_concurrency} running at once, {settings.max_queue} waiting · timeout {settings.timeout_s:g} s"
        + (" · API key required" if settings.api_key else ""),
        soft_wrap=True,
    )
    try:
        uvicorn.run(
            create_app(reasoner, settings),
            host=host,
            port=port,
            log_level=log_level,
            # in-flight requests finish on Ctrl-C / SIGTERM; none outlives its own --timeout for long
            timeout_graceful_shutdown=int(settings.timeout_s) + 10,
        )
    finally:
        reasoner.close()
