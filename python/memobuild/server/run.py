"""Starting and stopping the cache server: checks, storage recovery, the listening socket.

Without a token file the server has no authentication at all, so it refuses to listen anywhere
but loopback, and says so when it starts. On start it removes the temp files a killed server
left in ``tmp/`` (partial uploads: never visible as blobs, since a blob only appears by rename)
and brings the index in line with the files. SIGTERM and SIGINT stop it gracefully: it stops
accepting, lets requests in flight finish (up to ``SHUTDOWN_GRACE`` seconds), records the last
uses and closes the store.
"""

from __future__ import annotations

import asyncio
import signal
import time

from aiohttp import web

from memobuild.commands.options import format_size
from memobuild.errors import InputError
from memobuild.logging import logger
from memobuild.server.app import create_app
from memobuild.server.auth import TokenSet
from memobuild.server.bodies import BATCH
from memobuild.server.config import ServerConfig, is_loopback
from memobuild.server.storage import ServerStore

__all__ = ["SHUTDOWN_GRACE", "serve"]

SHUTDOWN_GRACE = 10.0


def _tokens(config: ServerConfig) -> TokenSet | None:
    if config.token_file is not None:
        return TokenSet.load(config.token_file)
    if not is_loopback(config.host):
        raise InputError(
            f"refusing to serve on {config.host} without --token-file: anyone who can reach it "
            "could read and write the cache. Give --token-file, or listen on 127.0.0.1"
        )
    return None


def _open_store(config: ServerConfig) -> ServerStore:
    started = time.monotonic()
    store = ServerStore(config.storage)
    stale = store.remove_stale_temp()
    store.reconcile()
    usage = store.usage()
    logger.info(
        f"storage {store.root}: {usage.blobs} blobs, {usage.actions} action entries, "
        f"{format_size(usage.bytes)}"
        + (f", limit {format_size(config.max_size)}" if config.max_size else ", no size limit")
        + (f"; removed {stale} partial uploads" if stale else "")
        + f" ({time.monotonic() - started:.2f}s)"
    )
    return store


async def _serve(config: ServerConfig, tokens: TokenSet | None, store: ServerStore) -> None:
    app = create_app(config, tokens, store)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=config.timeout,  # also bounds a request's headers (see app.py)
        read_bufsize=BATCH,
        shutdown_timeout=SHUTDOWN_GRACE,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_address=True)
        try:
            await site.start()
        except OSError as err:
            raise InputError(
                f"cannot listen on {config.host}:{config.port}: {err.strerror or err}"
            ) from err
        for address in _addresses(runner):
            logger.info(f"memobuild server listening on http://{address}")
        if tokens is None:
            logger.warning(
                "no --token-file: serving without authentication, on loopback only "
                "(anyone on this machine can read and write the cache)"
            )
        else:
            logger.info(f"bearer tokens required ({len(tokens.tokens)} configured)")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("stopping: finishing requests in flight")
    finally:
        await runner.cleanup()


def _addresses(runner: web.AppRunner) -> list[str]:
    out = []
    for address in runner.addresses:
        host, port = address[0], address[1]
        out.append(f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}")
    return out


def serve(config: ServerConfig) -> None:
    """Run the server until SIGTERM or SIGINT."""
    tokens = _tokens(config)
    store = _open_store(config)
    try:
        asyncio.run(_serve(config, tokens, store))
    finally:
        store.close()
