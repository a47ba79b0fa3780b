"""Shared pieces of the cc_kbc tests: a token provider over the test AA, and KBC settings."""

from __future__ import annotations

from typing import Any

from guestpull.kbs import CcKbc, KbsSettings
from guestpull.kbs.token import KbsToken, TeeKey, parse_token_reply
from guestpull.testing.kbs import TestAttestationAgent, TestKbs


class InProcessTokenProvider:
    """The test AA called directly (the ttrpc path is tested in test_kbs_aa.py)."""

    def __init__(self, aa: TestAttestationAgent) -> None:
        self.aa = aa

    async def get_token(self) -> tuple[KbsToken, TeeKey]:
        return parse_token_reply(self.aa.get_token())


def kbc_for(kbs: TestKbs, aa: TestAttestationAgent, **settings: Any) -> CcKbc:
    """A CcKbc for ``kbs`` (trusting its CA if it has one) with fast retries."""
    settings.setdefault("retry_delay", 0.01)
    cert = kbs.tls.ca_cert_pem.decode() if kbs.tls is not None else None
    return CcKbc(KbsSettings(kbs.url, settings.pop("kbs_cert", cert), **settings),
                 InProcessTokenProvider(aa))
