"""A real `specblock serve` application on a free loopback port, in a thread of the test."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn

from specblock.api import SpecGenerator
from specblock.serving.app import Server, ServerConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(gen: SpecGenerator, **config):
    """Yield (base URL, Server) while uvicorn serves `gen`; stops it afterwards."""
    server = Server(gen, ServerConfig(model_name="tiny", **config))
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        uv.should_exit = True
        thread.join(30)
