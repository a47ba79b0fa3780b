"""Servers for tests on a background thread with an event loop of their own.

Synchronous tests (the CLI through click's CliRunner, which runs ``asyncio.run`` itself) and
async tests alike can then reach them.  :class:`BackgroundLoop` is the thread and loop;
:class:`ThreadedApp` serves an aiohttp.web application on 127.0.0.1 with it.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Self

from aiohttp import web

from guestpull.testing import HarnessError, Stoppable
from guestpull.testing.certs import CertChain

_START_TIMEOUT = 10.0


class BackgroundLoop(Stoppable):
    """Run :meth:`_setup` and then the loop forever on a daemon thread; :meth:`_teardown` at stop."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _setup(self) -> None:
        raise NotImplementedError

    async def _teardown(self) -> None:
        pass

    def start(self) -> Self:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(ready, failure),
                                        name=self._name, daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT) or failure:
            self.stop()
            cause = failure[0] if failure else None
            raise HarnessError(f"{self._name} did not start: {cause or 'timed out'}") from cause
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_START_TIMEOUT)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._setup())
            ready.set()
            loop.run_forever()
        except BaseException as exc:  # reported to start(); the thread must not die silently
            failure.append(exc)
            ready.set()
        finally:
            loop.run_until_complete(self._teardown())
            loop.close()


class ThreadedApp(BackgroundLoop):
    """``ThreadedApp(app, ssl_context).start()``; ``port`` is set once started."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None,
                 *, name: str = "guestpull-test-app") -> None:
        super().__init__(name)
        self._app = app
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _setup(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = int(sockets[0].getsockname()[1])

    async def _teardown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def server_ssl_context(chain: CertChain) -> ssl.SSLContext:
    """A TLS server context presenting ``chain``'s certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain needs files; they are only read here, so a temp dir is enough.
    with TemporaryDirectory(prefix="guestpull-test-tls-") as tmp:
        paths = chain.write(Path(tmp))
        ctx.load_cert_chain(paths.cert, paths.key)
    return ctx
