"""The test kit's config builder: what it writes is what guestpull reads, option by option."""

from __future__ import annotations

from pathlib import Path

from support.config import ClientCert, Mirror, Rule, cdh_toml, initdata_toml, write_cdh, write_initdata
from guestpull.config import parse_cdh_config
from guestpull.initdata import InitData
from guestpull_testkit.certs import make_ca_chain


def test_every_option_reads_back_as_written(tmp_path: Path) -> None:
    pem = make_ca_chain().ca_cert_pem
    text = cdh_toml(
        kbc="cc_kbc", kbc_url="https://kbs.test", kbs_cert=pem, aa_socket="unix:///aa.sock",
        socket="unix:///cdh.sock", roots=[pem], insecure=["h:5000"],
        rules=[Rule("r:5000", prefix="alias", mirrors=(Mirror("m:5000", insecure=True),)),
               Rule(prefix="blocked.test", blocked=True)],
        auth_file=tmp_path / "auth.json", proxy={"https_proxy": "http://127.0.0.1:3128"},
        client_certs=[ClientCert("r:5000", tmp_path / "c.pem", "kbs:///default/k/key")],
        policy_file=tmp_path / "policy.json", sigstore_file=tmp_path / "s.yaml",
        image={"work_dir": "/run/w"},
    )
    cdh = parse_cdh_config(text, "cdh.toml")
    assert (cdh.socket, cdh.aa.aa_socket) == ("unix:///cdh.sock", "unix:///aa.sock")
    assert (cdh.kbc.name, cdh.kbc.url, cdh.kbc.kbs_cert) == ("cc_kbc", "https://kbs.test", pem.decode())
    image = cdh.image
    assert image is not None
    assert image.extra_root_certificates == [pem.decode()]
    assert image.authenticated_registry_credentials_uri == f"file://{tmp_path}/auth.json"
    assert image.image_security_policy_uri == f"file://{tmp_path}/policy.json"
    assert image.sigstore_config_uri == f"file://{tmp_path}/s.yaml"
    assert str(image.work_dir) == "/run/w"
    assert image.image_pull_proxy is not None and image.image_pull_proxy.https_proxy == "http://127.0.0.1:3128"
    [cert] = image.client_certificates
    assert (cert.cert_uri, cert.key_uri) == (f"file://{tmp_path}/c.pem", "kbs:///default/k/key")
    assert image.registry_config is not None
    alias, blocked, insecure = image.registry_config.registry
    assert (alias.prefix, alias.location, alias.insecure) == ("alias", "r:5000", False)
    assert [(m.location, m.insecure) for m in alias.mirror] == [("m:5000", True)]
    assert (blocked.prefix, blocked.blocked) == ("blocked.test", True)
    assert (insecure.location, insecure.insecure) == ("h:5000", True)


def test_the_default_is_offline_with_an_empty_image_table() -> None:
    # An absent [image] would make guestpull read the kernel command line instead.
    cdh = parse_cdh_config(cdh_toml(), "cdh.toml")
    assert cdh.kbc.name == "offline_fs_kbc" and cdh.image is not None
    assert cdh.image.registry_config is None and cdh.image.extra_root_certificates == []


def test_initdata_embeds_the_files_verbatim(tmp_path: Path) -> None:
    cdh = cdh_toml(insecure=["h:5000"])
    aa = '[token_configs.kbs]\nurl = "https://kbs.test"\n'
    document = InitData.parse(write_initdata(tmp_path / "i.toml", cdh, aa).read_bytes(), "i.toml")
    assert document.data == {"cdh.toml": cdh, "aa.toml": aa}
    assert InitData.parse(initdata_toml(cdh).encode(), "x").data == {"cdh.toml": cdh}
    assert write_cdh(tmp_path / "cdh.toml", insecure=["h:5000"]).read_text() == cdh
