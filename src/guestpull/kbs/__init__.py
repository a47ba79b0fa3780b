"""``cc_kbc``: KBS resources with a token from the attestation agent (coco-behaviour.md §9.2).

* :mod:`.token` — :class:`KbsToken`, :class:`TeeKey` and the :class:`TokenProvider` interface;
* :mod:`.aa` — the attestation agent's ``GetToken`` over ttrpc;
* :mod:`.jwe` — decrypting the KBS's flattened JWE (jwcrypto);
* :mod:`.client` — :class:`CcKbc`, the KBC that :class:`guestpull.resources.ResourceResolver`
  uses when ``[kbc] name = "cc_kbc"``.
"""

from guestpull.kbs.client import CcKbc, KbsSettings
from guestpull.kbs.token import KbsToken, TeeKey, TokenProvider

__all__ = ["CcKbc", "KbsSettings", "KbsToken", "TeeKey", "TokenProvider"]
