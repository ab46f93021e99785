"""Helpers behind the service fixtures of ``conftest.py`` (``service_index``, ``live_server``,
``free_port``); tests use those fixtures, benchmarks import these functions directly.

The index is built through the same library path as the default index of ``specsearch
serve`` (synthetic survey -> model -> embeddings -> sharded index). The model is the shipped
default; while it is missing (early development) a seeded, untrained model of the registered
``small`` architecture stands in, so the API contract is still exercised end to end.
"""

from __future__ import annotations

from pathlib import Path

N_STARS = 300


def model_dir(root: Path) -> Path | None:
    """None (the shipped default) if installed, else a seeded small model under root."""
    from specsearch.model import default_model_path

    if (default_model_path() / "config.json").is_file():
        return None
    path = root / "model"
    if not (path / "config.json").is_file():
        import torch

        from specsearch.model.checkpoint import save_model_dir
        from specsearch.model.config import model_config
        from specsearch.model.network import SpecCLIPNet

        torch.manual_seed(0)
        cfg = model_config("small").with_data(label_names=("teff", "logg", "feh"),
                                              class_names=())
        save_model_dir(path, SpecCLIPNet(cfg), cfg)
    return path


def small_index(root: Path) -> tuple[Path, Path | None, Path]:
    """(index_dir, model_dir, catalog_dir) of a 300-star, 2-shard index under ``root``."""
    from service.default_index import build_synthetic_index

    root.mkdir(parents=True, exist_ok=True)
    model = model_dir(root)
    index = build_synthetic_index(root / "survey", n=N_STARS, seed=7, model_dir=model,
                                  shards=2)
    return index, model, root / "survey" / "catalog"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """Run an ASGI app with uvicorn on 127.0.0.1 (a free port) in a background thread.

    Tests talk to it over real HTTP; ``app.dependency_overrides`` still apply (same
    process). Use as a context manager; ``url`` is the base URL.
    """

    def __init__(self, app, *, timeout_s: float = 30.0) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", access_log=False,
                                                    lifespan="on"))
        self.timeout_s = timeout_s
        self._thread = None

    def __enter__(self) -> "LiveServer":
        import threading
        import time

        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s)
