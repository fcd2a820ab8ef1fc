"""`specblock serve`: the OpenAI-compatible server (specblock/serving)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from specblock.cli.common import err, progress_reporter, user_errors
from specblock.errors import InvalidSettingError
from specblock.models.registry import DEFAULT_TARGET


def serve(
    target: Annotated[str, typer.Option(help="Registry name or local Hugging Face model directory.")] = DEFAULT_TARGET,
    method: Annotated[str, typer.Option(help="vanilla | lookup | draft-model | specblock | eagle3")] = "specblock",
    drafter: Annotated[Path | None, typer.Option(help="Trained drafter for specblock / eagle3 (default: shipped).")] = None,
    draft_model: Annotated[str | None, typer.Option(help="Draft model for --method draft-model.")] = None,
    node_budget: Annotated[str | None, typer.Option(help="Draft nodes per request and iteration, or auto.")] = None,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16 | int8")] = "auto",
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N | auto")] = "cpu",
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless told otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Requests decoded together; their trees share each target forward.")] = 4,
    queue: Annotated[int, typer.Option(help="Requests that may wait for a batch slot; beyond that: 503.")] = 16,
    api_key: Annotated[str | None, typer.Option(help="Require 'Authorization: Bearer KEY' on /v1/*.", envvar="SPECBLOCK_API_KEY")] = None,
    served_model_name: Annotated[str | None, typer.Option(help="The model id clients send (default: --target).")] = None,
    request_timeout: Annotated[float, typer.Option(help="Seconds a request may take, queueing included.")] = 600.0,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of requests that give none.")] = 512,
    max_context: Annotated[int, typer.Option(help="Tokens per request (prompt + output), at most the model's window; sizes each slot's KV cache.")] = 8192,
    shutdown_grace: Annotated[float, typer.Option(help="Seconds in-flight requests get to finish on SIGTERM.")] = 30.0,
) -> None:
    """Serve the target over an OpenAI-compatible HTTP API, with a web view at /."""
    import uvicorn

    from specblock.api import SpecGenerator
    from specblock.serving.app import Server, ServerConfig

    with user_errors():
        if max_batch < 1 or queue < 0 or request_timeout <= 0 or max_tokens < 1 or max_context < 2:
            raise InvalidSettingError(
                "--max-batch and --max-tokens must be >= 1, --max-context >= 2, --queue >= 0, --request-timeout > 0"
            )
        if not 0 < port < 65536:
            raise InvalidSettingError(f"--port must be in 1..65535, got {port}")
        with progress_reporter() as report:
            gen = SpecGenerator.load(
                target, method, dtype=dtype, device=device, node_budget=node_budget, draft_model=draft_model,
                drafter=drafter, report=report,
            )  # fmt: skip
        config = ServerConfig(
            model_name=served_model_name or str(target), api_key=api_key, request_timeout_s=request_timeout,
            default_max_tokens=max_tokens, max_batch=max_batch, queue_size=queue,
            max_context=max_context,
        )  # fmt: skip
        server = Server(gen, config, engine_thread=False)
        if note := server.exactness_note():
            err.print(note, highlight=False)
    budgets = server.scheduler.batch_budgets
    nodes = f"{gen.node_budget} draft nodes" if budgets is None else (
        "draft nodes per request by batch size " + ", ".join(f"{b}: {k}" for b, k in budgets.items()))  # fmt: skip
    err.print(
        f"serving {config.model_name} ({gen.method}, {nodes}, {gen.target.dtype_name}, batch {max_batch}) "
        f"at http://{host}:{port}/ (web view) and http://{host}:{port}/v1",
        highlight=False,
    )
    run_server(server, uvicorn.Config(server.app, host=host, port=port, log_level="warning",
                                      timeout_graceful_shutdown=shutdown_grace))  # fmt: skip


def run_server(server, config) -> None:
    """HTTP on a thread, the engine on this (the main) thread, where the model was loaded.
    SIGTERM / SIGINT: stop accepting, let in-flight requests finish (up to the grace period),
    stop the engine; a second signal exits at once."""
    import uvicorn

    http = uvicorn.Server(config)

    def on_signal(signum, frame) -> None:
        if http.should_exit:
            http.force_exit = True
        http.should_exit = True

    def serve_http() -> None:
        try:
            http.run()
        finally:  # however the HTTP server ends (shutdown, or a failed start), the engine ends too
            server.scheduler.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=serve_http, name="specblock-http", daemon=True)
    thread.start()
    try:
        server.scheduler.run()  # returns once the app's shutdown stops the scheduler
    finally:
        http.should_exit = True
        thread.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not http.started:
        err.print(f"[red]error:[/red] could not serve on {config.host}:{config.port} (is the port in use?)", highlight=False)
        raise typer.Exit(1)
