"""The attestation agent's ``GetToken("kbs")`` over ttrpc (cdh-service.md §4, upstream
``kbs_protocol/src/token_provider/aa``).

A connection per call: tokens are cached by :class:`guestpull.kbs.CcKbc`, so this runs once
per token lifetime, and a connection belongs to one event loop while the resolver may serve
several.  The reply's token and key never reach a log or an error message.
"""

from __future__ import annotations

from guestpull.errors import AuthError, ConfigError, Location, NetworkError, PullTimeoutError, clip
from guestpull.kbs.token import KbsToken, TeeKey, parse_token_reply, printable

GET_TOKEN = "GetToken"
TOKEN_TYPE = "kbs"
#: Upstream's GetToken timeout: the AA attests to the KBS meanwhile.
GET_TOKEN_TIMEOUT = 50.0


class AaTokenProvider:
    """KBS tokens from the attestation agent listening on ``aa_socket`` (``unix:///path``)."""

    def __init__(self, aa_socket: str, *, timeout: float = GET_TOKEN_TIMEOUT) -> None:
        self.aa_socket = aa_socket
        self.timeout = timeout

    async def get_token(self) -> tuple[KbsToken, TeeKey]:
        # Imported here so that a pull that needs no KBS token never loads protobuf.
        from google.protobuf.message import DecodeError

        from guestpull import protos as proto
        from guestpull.protos import AA_SERVICE
        from guestpull.ttrpc import Code, RpcConnectionError, RpcError, TtrpcClient

        try:
            client = await TtrpcClient.connect(self.aa_socket)
        except ConfigError as err:
            raise ConfigError(err.message, location=Location(field="aa.aa_socket")) from None
        except RpcConnectionError as err:
            raise NetworkError(
                f"cannot reach the attestation agent for a KBS token: {err.message}",
                hint="is the attestation-agent running? cdh.toml [aa] aa_socket names its socket",
            ) from None
        request = proto.GetTokenRequest(TokenType=TOKEN_TYPE).SerializeToString()
        async with client:
            try:
                reply = await client.call(AA_SERVICE, GET_TOKEN, request, timeout=self.timeout)
            except RpcError as err:
                if err.code == Code.DEADLINE_EXCEEDED:
                    raise PullTimeoutError(
                        f"the attestation agent did not return a KBS token within {self.timeout:g} s"
                    ) from None
                raise AuthError(
                    f"the attestation agent could not get a KBS token: {clip(printable(err.message))}",
                    hint="the attestation agent's log says why; often the KBS refused its evidence "
                    "or aa.toml [token_configs.kbs] url is wrong",
                ) from None
            except RpcConnectionError as err:
                raise NetworkError(f"the attestation agent hung up: {err.message}") from None
        response = proto.GetTokenResponse()
        try:
            response.ParseFromString(reply)
        except DecodeError:
            raise AuthError("the attestation agent's GetToken answer is not a GetTokenResponse") from None
        return parse_token_reply(bytes(response.Token))
