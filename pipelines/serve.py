"""Serve a bundle over HTTP: ``python -m pipelines.serve bundle_dir=<export_faiss output>
[host=127.0.0.1 port=8080 workers=1]``.

Only starts the service (:mod:`tte_recsys.serving.service`, docs/serving.md) under uvicorn: loads
and verifies the bundle, listens (and on the admin listener, when ``admin.enabled``), prints one
line ``serving <version> (<n> items) on http://host:port`` to stdout, and serves until SIGTERM or
SIGINT, after which it stops accepting, lets requests in flight finish and exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import hydra
import uvicorn
from omegaconf import DictConfig, OmegaConf
from uvicorn.supervisors import Multiprocess

from tte_recsys.artifacts import read_manifest
from tte_recsys.config import from_mapping
from tte_recsys.runs import check_overrides, cli
from tte_recsys.serving.bundle import KIND
from tte_recsys.serving.service import CONFIG_ENV, Service, ServiceConfig, config_to_env


def _listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening socket for uvicorn (connections queue from here on, before the server starts
    accepting); a port in use is a one-line error."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(backlog)
    sock.set_inheritable(True)  # uvicorn's worker processes inherit it
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextmanager
def _stop_on_signals(server: uvicorn.Server) -> Iterator[None]:
    """SIGTERM / SIGINT stop ``server`` gracefully and the command exits 0, whenever they come.
    While it runs, uvicorn's own handlers take them, and after its shutdown it raises the signal
    again for the handler that was there before it: this one, which returns instead of dying of
    it. One that arrives before uvicorn has installed its handlers sets ``should_exit``, so the
    server stops as soon as it has started instead of the signal being lost."""

    def stopped(sig: int, frame: FrameType | None) -> None:
        server.should_exit = True
        print(f"stopped by {signal.Signals(sig).name}", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(cfg: DictConfig) -> None:
    section: Any = OmegaConf.to_container(cfg.service, resolve=True)
    admin = bool(cfg.admin.enabled)
    service_cfg = from_mapping(
        ServiceConfig,
        {**section, "bundle_dir": str(cfg.bundle_dir), "share": cfg.share, "admin": admin},
        "service",
    )
    workers = int(cfg.workers)
    if workers < 1:
        raise ValueError(f"workers={workers}: expected >= 1")
    if workers > 1 and admin:
        raise ValueError(
            f"admin.enabled with workers={workers}: POST /admin/reload would reach one worker of {workers}; "
            "set service.watch_interval_s instead (every worker watches bundle_dir), or run one worker "
            "per replica behind a load balancer (docs/serving.md)"
        )
    options: dict[str, Any] = {
        "log_level": str(cfg.log_level),
        "access_log": bool(cfg.access_log),
        "timeout_keep_alive": int(cfg.keep_alive_s),
        "timeout_graceful_shutdown": int(cfg.graceful_shutdown_s),
        "lifespan": "on",
    }
    if workers == 1:
        service = Service(service_cfg)
        bundle = service.load()  # verified before the port opens: a bad bundle is a one-line error
        sockets = [_listen(str(cfg.host), int(cfg.port))]
        line = f"serving {bundle.version} ({len(bundle.retriever.item_ids)} items) on {_url(sockets[0])}"
        if admin:
            sockets.append(_listen(str(cfg.admin.host), int(cfg.admin.port)))
            admin_host, admin_port = sockets[1].getsockname()[:2]
            service.admin_address = (admin_host, admin_port)
            line += f", admin on {_url(sockets[1])}"
        server = uvicorn.Server(uvicorn.Config(service.app(), **options))
        with _stop_on_signals(server):
            print(line, flush=True)  # from here a stop signal is never lost
            server.run(sockets=sockets)
        return
    # Several processes: each loads the bundle in its lifespan (verify it here first, once, so
    # that a bad bundle is one line, not N failing workers).
    manifest = read_manifest(service_cfg.bundle_dir, kind=KIND)
    os.environ[CONFIG_ENV] = config_to_env(service_cfg)
    sock = _listen(str(cfg.host), int(cfg.port))
    config = uvicorn.Config(
        "tte_recsys.serving.service:app_from_env", factory=True, workers=workers, **options
    )
    print(f"serving {manifest['count']} items on {_url(sock)} with {workers} workers", flush=True)
    Multiprocess(config, sockets=[sock]).run()


@hydra.main(version_base="1.3", config_path="../configs", config_name="serve")
def main(cfg: DictConfig) -> None:
    cli(run, cfg)


if __name__ == "__main__":
    check_overrides("serve")
    main()
