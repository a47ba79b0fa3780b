"""Configuration models: ``cdh.toml``, ``aa.toml`` and registries.conf (coco-behaviour.md §2, §3).

Unknown keys are ignored, as upstream does; :func:`unknown_keys` lists them so the linter can
report them.  Every parse function takes the text and a ``source`` label (a file name, or e.g.
``initdata.toml: data."cdh.toml"``) and raises :class:`ConfigError` whose location names the
source, the dotted field path and, where known, the line and column.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from guestpull.configmodel import Field, Model, field_validator, model_validator
from guestpull.errors import ConfigError, GuestpullError, Location
from guestpull.reference import DOMAIN_RE
from guestpull.resources import check_resource_uri

if TYPE_CHECKING:
    import pydantic

DEFAULT_CDH_SOCKET = "unix:///run/confidential-containers/cdh.sock"
DEFAULT_AA_SOCKET = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
DEFAULT_WORK_DIR = Path("/run/kata-containers/image")
KBS_CREDENTIALS_DIR = PurePosixPath("/run/confidential-containers/cdh/kbs")
KNOWN_KBC_NAMES = ("cc_kbc", "offline_fs_kbc")
AUTH_URI_ENV = "CDH_DEFAULT_IMAGE_AUTHENTICATED_REGISTRY_CREDENTIALS"

M = TypeVar("M", bound=Model)


class _Model(Model):
    # Python code may use field names; TOML input is validated by key only (see
    # validate_model), so a misspelt ``unqualified_search_registries`` is ignored, as upstream.
    # Plainly valid input needs no pydantic (configmodel.py): the pull path starts faster.
    pass


# --- registries.conf (§3.1, §3.2) ---------------------------------------------------------


#: ``pull-from-mirror`` values (containers-registries.conf(5)); "" is "all", as there.
PullFromMirror = Literal["", "all", "digest-only", "tag-only"]


class Mirror(_Model):
    location: str
    insecure: bool = False
    # Which pulls may use this mirror: a tag pull never asks a "digest-only" mirror to resolve
    # the tag (upstream image-rs ignores the key; registries.py implements it).
    pull_from_mirror: PullFromMirror = Field(default="", key="pull-from-mirror")


class RegistryRule(_Model):
    """One ``[[registry]]`` table.  After validation an empty ``prefix`` is the ``location``."""

    prefix: str = ""
    location: str = ""
    insecure: bool = False
    blocked: bool = False
    mirror: list[Mirror] = Field(default_factory=list)
    # Legacy form of ``pull-from-mirror = "digest-only"`` for every mirror of the rule.
    mirror_by_digest_only: bool = Field(default=False, key="mirror-by-digest-only")

    @model_validator(mode="after")
    def _validate_and_tidy(self) -> RegistryRule:
        # Same checks and messages as image-rs validate_and_tidy.
        if not self.prefix:
            if not self.location:
                raise ValueError("illegal Registry Config: both location and prefix are empty")
            self.prefix = self.location
        if self.prefix.startswith("*.") and not self.location:
            raise ValueError(
                "illegal Registry Config: location is unset and prefix is with wildcard"
            )
        for mirror in self.mirror:
            if not mirror.location:
                raise ValueError("illegal Registry Config: mirror location is empty")
        return self


class RegistriesConfig(_Model):
    unqualified_search_registries: list[str] = Field(
        default_factory=lambda: ["docker.io"], key="unqualified-search-registries"
    )
    registry: list[RegistryRule] = Field(default_factory=list)


# --- cdh.toml [image] (§2.3) ----------------------------------------------------------------


class ImagePullProxy(_Model):
    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: str | None = None


class ClientCertificate(_Model):
    """guestpull extension ``[[image.client_certificates]]``: an mTLS identity for a registry.

    Both are resource URIs (path, ``file://``, ``kbs:///``): a private key must not sit in
    Init-Data, which the host can read.
    """

    registry: str
    cert_uri: str
    key_uri: str

    @field_validator("registry")
    @classmethod
    def _registry_is_host_port(cls, value: str) -> str:
        if not DOMAIN_RE.match(value):
            raise ValueError(
                f"expected a registry host[:port] such as 'registry.local:5000', got {value!r}"
            )
        return value

    @field_validator("cert_uri", "key_uri")
    @classmethod
    def _is_resource_uri(cls, value: str) -> str:
        if "-----BEGIN" in value:
            raise ValueError(
                "expected a resource URI (path, file:// or kbs:///...), not PEM content: "
                "Init-Data is visible to the host, so keys are fetched by URI"
            )
        try:
            check_resource_uri(value)
        except GuestpullError as err:
            raise ValueError(err.message) from None
        return value


class ImageConfig(_Model):
    work_dir: Path = DEFAULT_WORK_DIR
    max_concurrent_layer_downloads_per_image: int = Field(default=3, ge=1)
    image_security_policy_uri: str | None = None
    image_security_policy: str | None = None
    sigstore_config_uri: str | None = None
    sigstore_config: str | None = None
    authenticated_registry_credentials_uri: str | None = None
    registry_configuration_uri: str | None = None
    registry_config: RegistriesConfig | None = None
    image_pull_proxy: ImagePullProxy | None = None
    extra_root_certificates: list[str] = Field(default_factory=list)
    client_certificates: list[ClientCertificate] = Field(default_factory=list)

    @field_validator("client_certificates")
    @classmethod
    def _one_identity_per_registry(cls, value: list[ClientCertificate]) -> list[ClientCertificate]:
        seen: set[str] = set()
        for cert in value:
            if cert.registry in seen:
                raise ValueError(f"two client certificates for registry {cert.registry!r}")
            seen.add(cert.registry)
        return value

    def registries(self, resolver: ResourceGetter) -> RegistriesConfig | None:
        """The registry rules in force: inline ``registry_config`` wins over the URI."""
        if self.registry_config is not None:
            return self.registry_config
        if not self.registry_configuration_uri:
            return None
        uri = self.registry_configuration_uri
        return parse_registries_config(_decode(resolver.get(uri), uri), uri)

    @classmethod
    def from_kernel_cmdline(cls, cmdline: str) -> ImageConfig:
        """The upstream fallback when ``[image]`` is absent (§2.3): a few ``agent.*`` keys."""
        params: dict[str, str] = {}
        for word in cmdline.split():
            key, _, value = word.partition("=")
            params[key] = value  # a later duplicate wins, as upstream
        proxy = {
            name: params[f"agent.{name}"]
            for name in ("https_proxy", "http_proxy", "no_proxy")
            if f"agent.{name}" in params
        }
        fields: dict[str, Any] = {}
        if proxy:
            fields["image_pull_proxy"] = ImagePullProxy(**proxy)
        if "agent.image_registry_auth" in params:
            fields["authenticated_registry_credentials_uri"] = params["agent.image_registry_auth"]
        if params.get("agent.enable_signature_verification") == "true" and (
            "agent.image_policy_file" in params
        ):
            fields["image_security_policy_uri"] = params["agent.image_policy_file"]
        return cls(**fields)

    def with_environment(self, environ: Mapping[str, str]) -> ImageConfig:
        """Apply the CDH's env override of the auth file URI (§2.1), as the CDH does on load."""
        uri = environ.get(AUTH_URI_ENV)
        if uri is None:
            return self
        return self.model_copy(update={"authenticated_registry_credentials_uri": uri})


class ResourceGetter(Protocol):
    def get(self, uri: str) -> bytes: ...


# --- cdh.toml top level (§2.2) --------------------------------------------------------------


class AaSocketConfig(_Model):
    aa_socket: str = DEFAULT_AA_SOCKET


class KbcConfig(_Model):
    name: str
    url: str = ""
    kbs_cert: str | None = None


class KbsCredential(_Model):
    """A ``[[credentials]]`` entry: a KBS resource written to ``path`` at CDH start."""

    resource_uri: str
    path: str

    @field_validator("path")
    @classmethod
    def _under_kbs_dir(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_relative_to(KBS_CREDENTIALS_DIR) or ".." in path.parts:
            raise ValueError(f"path must be under {KBS_CREDENTIALS_DIR}, got {value!r}")
        return value


class LogConfig(_Model):
    level: str = "info"


class CdhConfig(_Model):
    socket: str = DEFAULT_CDH_SOCKET
    aa: AaSocketConfig = Field(default_factory=AaSocketConfig)
    kbc: KbcConfig
    credentials: list[KbsCredential] = Field(default_factory=list)
    skip_sealed_secret_verification: bool = False
    log: LogConfig = Field(default_factory=LogConfig)
    # Absent [image] means upstream's kernel-cmdline fallback (ImageConfig.from_kernel_cmdline).
    image: ImageConfig | None = None

    def image_config(self, cmdline: str = "") -> ImageConfig:
        return self.image if self.image is not None else ImageConfig.from_kernel_cmdline(cmdline)


# --- aa.toml (§2.4) -------------------------------------------------------------------------


class KbsTokenConfig(_Model):
    url: str
    cert: str | None = None
    tee_key_algorithm: Literal["ECDH-ES+A256KW-P256", "ECDH-ES+A256KW-P521", "RSA-OAEP-256"] = (
        "ECDH-ES+A256KW-P256"
    )


class CocoAsTokenConfig(_Model):
    url: str


class TokenConfigs(_Model):
    kbs: KbsTokenConfig | None = None
    coco_as: CocoAsTokenConfig | None = None


class EventlogConfig(_Model):
    init_pcr: int = 17
    enable_eventlog: bool = False


class AaConfig(_Model):
    token_configs: TokenConfigs = Field(default_factory=TokenConfigs)
    eventlog_config: EventlogConfig = Field(default_factory=EventlogConfig)
    log: LogConfig = Field(default_factory=LogConfig)


# --- parsing --------------------------------------------------------------------------------


def parse_cdh_config(text: str, source: str, *, line_offset: int = 0) -> CdhConfig:
    """Parse ``cdh.toml`` text; ``line_offset`` shifts reported lines (text embedded elsewhere)."""
    return _parse(text, source, CdhConfig, line_offset)


def load_cdh_config(path: Path | str) -> CdhConfig:
    path = Path(path)
    return parse_cdh_config(_read_text(path), str(path))


def parse_aa_config(text: str, source: str, *, line_offset: int = 0) -> AaConfig:
    return _parse(text, source, AaConfig, line_offset)


def parse_registries_config(text: str, source: str, *, line_offset: int = 0) -> RegistriesConfig:
    return _parse(text, source, RegistriesConfig, line_offset)


def parse_toml(text: str, source: str, *, line_offset: int = 0) -> dict[str, Any]:
    """tomllib.loads with a ConfigError naming the source, line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message, line, column = _split_toml_message(str(err))
        raise ConfigError(
            f"invalid TOML: {message}",
            location=Location(
                file=source, line=None if line is None else line + line_offset, column=column
            ),
        ) from None


def unknown_keys(raw: Mapping[str, Any], model: type[Model], prefix: str = "") -> list[str]:
    """Dotted paths of keys in ``raw`` that ``model`` does not know (and so ignores)."""
    fields = {info.key: info for info in model.config_fields().values()}
    found: list[str] = []
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        info = fields.get(key)
        if info is None:
            found.append(path)
            continue
        sub = _model_in(info.annotation)
        if sub is None:
            continue
        if isinstance(value, Mapping):
            found += unknown_keys(value, sub, path)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    found += unknown_keys(item, sub, f"{path}[{index}]")
    return found


def _parse(text: str, source: str, model: type[M], line_offset: int) -> M:
    raw = parse_toml(text, source, line_offset=line_offset)
    return validate_model(raw, model, source, text=text, line_offset=line_offset)


def validate_model(
    raw: Mapping[str, Any],
    model: type[M],
    source: str,
    *,
    text: str | None = None,
    line_offset: int = 0,
) -> M:
    """Validate already-parsed data; a pydantic error becomes a ConfigError naming the field."""
    # by_name=False: only the TOML spelling of a key counts, as upstream.
    valid = model.validate_fast(raw, by_alias=True, by_name=False)
    if valid is not None:
        return valid
    from pydantic import ValidationError  # only now: input that is not plainly valid

    try:
        return model.model_validate(raw, by_alias=True, by_name=False)
    except ValidationError as err:
        raise _config_error(err, source, text, line_offset) from None


def _config_error(err: pydantic.ValidationError, source: str, text: str | None, offset: int) -> ConfigError:
    problems = err.errors(include_url=False)
    first_loc = problems[0]["loc"]
    line = field_line(text, dotted_path(first_loc)) if text else None
    # The first problem's path is in the location; the others name their own.
    message = _describe(problems[0], with_path=False)
    others = [_describe(problem, with_path=True) for problem in problems[1:]]
    if others:
        message += "; also " + "; ".join(others[:4])
    if len(others) > 4:
        message += f"; and {len(others) - 4} more"
    return ConfigError(
        message,
        location=Location(
            file=source,
            field=dotted_path(first_loc) or None,
            line=None if line is None else line + offset,
        ),
    )


def dotted_path(loc: tuple[int | str, ...]) -> str:
    """``('image', 'registry_config', 'registry', 0)`` → ``image.registry_config.registry[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(problem: Mapping[str, Any], *, with_path: bool) -> str:
    path = dotted_path(problem["loc"]) if with_path else ""
    message = str(problem["msg"]).removeprefix("Value error, ")
    if problem["type"] == "missing":
        message = "required field is missing"
    shown = _safe_input(problem.get("input"), problem["type"])
    if shown is not None:
        message += f" (got {shown})"
    return f"{path}: {message}" if path else message


def _safe_input(value: Any, error_type: str) -> str | None:
    # Echo only short scalars: a config value may hold PEM or other material not meant for logs.
    if error_type in ("missing", "value_error"):
        return None
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        if "\n" in value or "-----BEGIN" in value or len(value) > 60:
            return None
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return None


# --- where a field sits in TOML text (config errors here, lint findings) ---------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")
_LAST_PART = re.compile(r"(\[\d+\]|\.[^.\[]+|^[^.\[]+)$")


def field_line(text: str, dotted: str) -> int | None:
    """Best-effort line of ``a.b[2].c`` in TOML text: the key's line, else the nearest enclosing
    table header or key that is written out."""
    lines = _path_lines(text)
    path = dotted
    while path:
        if path in lines:
            return lines[path]
        shorter = _LAST_PART.sub("", path)
        # A part that is not a TOML key (pydantic's "list[str]" of a union) goes whole.
        path = shorter if shorter != path else path.rpartition(".")[0]
    return None


def _path_lines(text: str) -> dict[str, int]:
    """Dotted paths (arrays of tables indexed) → the line where each is first written."""
    found: dict[str, int] = {}
    counts: dict[str, int] = {}
    table = ""
    in_string = False
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string:
            in_string = (line.count("'''") + line.count('"""')) % 2 == 0
            continue
        header = _HEADER.match(line)
        if header:
            name = _normalise_key(header.group(2))
            if header.group(1) == "[[":
                counts[name] = counts.get(name, 0) + 1
                # A new array item starts its own nested arrays from index 0.
                for nested in [k for k in counts if k.startswith(name + ".")]:
                    del counts[nested]
            name = _indexed(name, counts)
            table = name
            found.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            name = _normalise_key(key.group(1))
            path = f"{table}.{name}" if table else name
            found.setdefault(path, number)
            in_string = (line.count("'''") + line.count('"""')) % 2 == 1
    return found


def _indexed(name: str, counts: dict[str, int]) -> str:
    """``a.registry.mirror`` → ``a.registry[1].mirror[0]``: the current item of each array."""
    parts = name.split(".")
    out: list[str] = []
    for part in parts:
        out.append(part)
        prefix = ".".join(p.split("[")[0] for p in out)
        if prefix in counts:
            out[-1] = f"{part}[{counts[prefix] - 1}]"
    return ".".join(out)


def _normalise_key(key: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in key.split("."))


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _split_toml_message(message: str) -> tuple[str, int | None, int | None]:
    match = _TOML_POSITION.search(message)
    if not match:
        return message.replace(" (at end of document)", " at end of document"), None, None
    return message[: match.start()], int(match.group(1)), int(match.group(2))


def _model_in(annotation: Any) -> type[Model] | None:
    """The model inside ``Model``, ``Model | None`` or ``list[Model]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, Model):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", location=Location(file=str(path))) from None
    except OSError as err:
        where = Location(file=str(path))
        raise ConfigError(f"cannot read: {err.strerror}", location=where) from None
    return _decode(data, str(path))


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"not UTF-8 text (bad byte at offset {err.start})", location=Location(file=source)
        ) from None
