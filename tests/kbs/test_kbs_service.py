"""The CDH socket's GetResource through cc_kbc: kata-agent's path to a KBS secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestpull.config import parse_cdh_config
from guestpull.pull import Puller
from guestpull import protos as proto
from guestpull.service.cdh import ConfidentialDataHub
from guestpull.ttrpc import Code, RpcError, TtrpcClient, TtrpcServer
from guestpull_testkit.kbs import TestKbs
from kbs.conftest import SECRET, serve_aa
from support.config import cdh_toml

GET_RESOURCE = ("api.GetResourceService", "GetResource")


async def get_resource(socket: Path, uri: str) -> bytes:
    async with await TtrpcClient.connect(f"unix://{socket}") as client:
        request = proto.GetResourceRequest(ResourcePath=uri).SerializeToString()
        reply = proto.GetResourceResponse()
        reply.ParseFromString(await client.call(*GET_RESOURCE, request, timeout=30))
        return bytes(reply.Resource)


async def test_get_resource_over_the_cdh_socket(https_kbs: TestKbs, shm_path: Path) -> None:
    https_kbs.denied.add("default/key/k")
    https_kbs.resources["default/key/k"] = b"withheld"
    with serve_aa(https_kbs, shm_path, key_type="ec-p521") as aa:
        assert https_kbs.tls is not None
        cdh = parse_cdh_config(cdh_toml(kbc="cc_kbc", kbc_url=https_kbs.url, kbs_cert=https_kbs.tls.ca_cert_pem,
                                        aa_socket=aa.address), "cdh.toml")
        socket = shm_path / "cdh.sock"
        async with Puller(cdh, work_dir=shm_path / "work") as puller:
            server = TtrpcServer(ConfidentialDataHub(puller, None).services())
            await server.start_unix(socket)
            try:
                assert await get_resource(socket, "kbs:///default/credential/test") == SECRET
                with pytest.raises(RpcError) as info:
                    await get_resource(socket, "kbs:///default/key/k")
                assert info.value.code == Code.INTERNAL
                assert "not found or not released to this guest" in info.value.status_message
                assert "withheld" not in info.value.status_message
            finally:
                await server.shutdown(grace=1.0)
    assert aa.requests == ["kbs"] * 3, "one token, then a new one after each of two 401s"
