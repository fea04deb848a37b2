"""``personavec serve``: the OpenAI-compatible server (see ``docs/serving.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personavec.cli.common import (
    DeviceOption,
    DtypeOption,
    EngineOption,
    ModelOption,
    console,
    friendly_errors,
)


@friendly_errors
def serve_command(
    model: ModelOption = "smollm2",
    vectors: Annotated[
        Path | None,
        typer.Option(help="Folder of persona vectors (*.safetensors; name = file stem)."),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback needs --api-key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(help="Require 'Authorization: Bearer KEY' (or set PERSONAVEC_API_KEY)."),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most sequences decoded together.")] = 8,
    max_queue: Annotated[int, typer.Option(help="Most sequences waiting (more: 429).")] = 64,
    max_tokens_limit: Annotated[
        int, typer.Option("--max-tokens-limit", help="Largest max_tokens a request may ask for.")
    ] = 512,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (more: 413).")] = (
        1_000_000
    ),
    request_timeout: Annotated[
        float, typer.Option(help="Seconds before an unfinished request is cancelled (504).")
    ] = 300.0,
    batch_wait_ms: Annotated[
        float, typer.Option(help="Milliseconds to wait for more requests before a batch starts.")
    ] = 10.0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    engine: EngineOption = "hf",
) -> None:
    """Serve the model over an OpenAI-compatible API with per-request steering and readings."""
    from personavec.core.models import load_model
    from personavec.serve.app import create_app
    from personavec.serve.config import ServeConfig
    from personavec.serve.server import run_server

    config = ServeConfig(
        model=model,
        vectors_dir=vectors,
        host=host,
        port=port,
        api_key=api_key,
        max_batch=max_batch,
        max_queue=max_queue,
        max_tokens_limit=max_tokens_limit,
        max_body_bytes=max_body_bytes,
        request_timeout_s=request_timeout,
        batch_wait_ms=batch_wait_ms,
        engine=engine,
    )
    loaded = load_model(model, device=device, dtype=dtype)
    app = create_app(config, loaded)
    names = ", ".join(app.state.server.vectors.vectors) or "none"
    console.print(
        f"serving {loaded.model_id} on http://{host}:{port} (vectors: {names}); "
        f"dashboard at /, API at /v1",
        highlight=False,
        markup=False,
    )
    notice = app.state.server.scheduler.notice
    if notice:
        console.print(f"note: {notice}", highlight=False, markup=False)
    run_server(app, host, port)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
