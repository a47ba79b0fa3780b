"""An attestation agent stand-in speaking ttrpc on a unix socket: ``GetToken`` for a TestKbs.

It serves ``attestation_agent.AttestationAgentService/GetToken`` with the service's ttrpc
server (guestpull.service.ttrpc) from a background thread, so that synchronous tests (the CLI
through CliRunner) and async tests can both use it.  Failures answer as the real AA does:
INTERNAL ``"[ERROR:attestation-agent] AA-KBC get token failed"``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Self

from guestpull.testing import HarnessError, Stoppable
from guestpull.testing.kbs import TestAttestationAgent

AA_SERVICE = "attestation_agent.AttestationAgentService"
_START_TIMEOUT = 10.0


class AttestationAgentServer(Stoppable):
    """Serves ``agent`` on ``socket_path``; ``address`` is the ``unix://`` form for ``[aa] aa_socket``.

    ``requests`` lists the TokenType of every GetToken call.
    """

    def __init__(self, agent: TestAttestationAgent, socket_path: Path) -> None:
        self.agent = agent
        self.socket_path = Path(socket_path)
        self.requests: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> Self:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(ready, failure),
                                        name="guestpull-test-aa", daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT) or failure:
            self.stop()
            raise HarnessError(f"the AA stand-in did not start: {failure[0] if failure else 'timed out'}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_START_TIMEOUT)
        self._thread = None
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        from guestpull.service.ttrpc import TtrpcServer

        loop = asyncio.new_event_loop()
        self._loop = loop
        server = TtrpcServer({AA_SERVICE: {"GetToken": self._get_token}})
        try:
            loop.run_until_complete(server.start_unix(self.socket_path))
            ready.set()
            loop.run_forever()
            loop.run_until_complete(server.shutdown(grace=1.0))
        except BaseException as exc:  # reported to start()
            failure.append(exc)
            ready.set()
        finally:
            loop.close()

    async def _get_token(self, context: object, payload: bytes) -> bytes:
        from guestpull.service import proto
        from guestpull.service.ttrpc import Code, RpcError

        request = proto.GetTokenRequest()
        request.ParseFromString(payload)
        self.requests.append(request.TokenType)
        if request.TokenType != "kbs":
            raise RpcError(Code.INTERNAL, "[ERROR:attestation-agent] AA-KBC get token failed")
        try:
            token = await asyncio.to_thread(self.agent.get_token)
        except RuntimeError:
            raise RpcError(Code.INTERNAL, "[ERROR:attestation-agent] AA-KBC get token failed") from None
        return proto.GetTokenResponse(Token=token).SerializeToString()
