"""An attestation agent stand-in speaking ttrpc on a unix socket: ``GetToken`` for a TestKbs.

It serves ``attestation_agent.AttestationAgentService/GetToken`` with the service's ttrpc
server (guestpull.ttrpc) from a background thread, so that synchronous tests (the CLI
through CliRunner) and async tests can both use it.  Failures answer as the real AA does:
INTERNAL ``"[ERROR:attestation-agent] AA-KBC get token failed"``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from guestpull.protos import AA_SERVICE
from guestpull.testing.kbs import TestAttestationAgent
from guestpull.testing.webapp import BackgroundLoop

if TYPE_CHECKING:
    from guestpull.ttrpc import TtrpcServer



class AttestationAgentServer(BackgroundLoop):
    """Serves ``agent`` on ``socket_path``; ``address`` is the ``unix://`` form for ``[aa] aa_socket``.

    ``requests`` lists the TokenType of every GetToken call.
    """

    def __init__(self, agent: TestAttestationAgent, socket_path: Path) -> None:
        super().__init__("guestpull-test-aa")
        self.agent = agent
        self.socket_path = Path(socket_path)
        self.requests: list[str] = []
        self._server: TtrpcServer | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.socket_path}"

    def stop(self) -> None:
        super().stop()
        self.socket_path.unlink(missing_ok=True)

    async def _setup(self) -> None:
        from guestpull.ttrpc import TtrpcServer

        self._server = TtrpcServer({AA_SERVICE: {"GetToken": self._get_token}})
        await self._server.start_unix(self.socket_path)

    async def _teardown(self) -> None:
        if self._server is not None:
            await self._server.shutdown(grace=1.0)

    async def _get_token(self, context: object, payload: bytes) -> bytes:
        from guestpull import protos as proto
        from guestpull.ttrpc import Code, RpcError

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
