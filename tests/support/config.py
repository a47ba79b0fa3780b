"""The tests' cdh.toml / Init-Data builder: the test kit's, re-exported so there is one."""

from guestpull_testkit.config import (
    OFFLINE_KBC,
    ClientCert,
    Mirror,
    Rule,
    cdh_toml,
    file_uri,
    initdata_toml,
    write_cdh,
    write_initdata,
)

__all__ = [
    "OFFLINE_KBC", "ClientCert", "Mirror", "Rule", "cdh_toml", "file_uri", "initdata_toml",
    "write_cdh", "write_initdata",
]
