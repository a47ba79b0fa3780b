"""The exception hierarchy: every failure a user can meet has a class and a category.

The CLI maps a category to an exit code and a one-line message; ``--json`` gives
:meth:`GuestpullError.to_dict`.  Messages never contain credentials: code that builds an
error from something holding a secret passes only the parts that are safe to show.
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar


#: The most characters of a string from the network or a layer (an entry name, a media type,
#: a header) that a message repeats: a 64 KiB entry name must not become a 64 KiB error line
#: (nor the log a place an attacker writes into).
ECHO_LIMIT = 200


def clip(text: object, limit: int = ECHO_LIMIT) -> str:
    """``text`` for a message: at most ``limit`` characters, marked when cut."""
    value = str(text)
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…(+{len(value) - limit} chars)"


def shown(value: str, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` for a message (names, where quotes show spaces), cut like :func:`clip`."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}…(+{len(value) - limit} chars)"


class Category(enum.StrEnum):
    """What kind of failure this is; each has its own exit code."""

    USAGE = "usage"
    CONFIG = "config"
    NETWORK = "network"
    TLS = "tls"
    AUTH = "auth"
    HTTP_STATUS = "http-status"
    NOT_FOUND = "not-found"
    BLOCKED = "blocked"
    PLATFORM = "platform"
    DIGEST = "digest"
    UNSUPPORTED = "unsupported"
    POLICY = "policy"
    UNPACK = "unpack"
    NO_SPACE = "no-space"
    TIMEOUT = "timeout"
    EXISTS = "exists"
    INTERNAL = "internal"


EXIT_CODES: dict[Category, int] = {
    Category.USAGE: 2,
    Category.CONFIG: 3,
    Category.NETWORK: 4,
    Category.TLS: 5,
    Category.AUTH: 6,
    Category.HTTP_STATUS: 7,
    Category.NOT_FOUND: 8,
    Category.BLOCKED: 9,
    Category.PLATFORM: 10,
    Category.DIGEST: 11,
    Category.UNSUPPORTED: 12,
    Category.POLICY: 13,
    Category.UNPACK: 14,
    Category.NO_SPACE: 15,
    Category.TIMEOUT: 16,
    Category.EXISTS: 17,
    Category.INTERNAL: 70,
}


@dataclass(frozen=True)
class Location:
    """Where in the user's input a problem sits.  Every part is optional."""

    file: str | None = None
    field: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        parts: list[str] = []
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            parts.append(where)
        elif self.line is not None:
            parts.append(f"line {self.line}" + (f", column {self.column}" if self.column else ""))
        if self.field:
            parts.append(self.field)
        return ": ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class GuestpullError(Exception):
    """Base of every error guestpull raises on purpose."""

    category: ClassVar[Category] = Category.INTERNAL

    def __init__(
        self, message: str, *, location: Location | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.category]

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps location, hint and subclass fields when an error crosses a process boundary
        # (unpack workers); the default would call __init__ with the message alone.
        return (_restore_error, (type(self), self.message, self.__dict__))

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}" if self.location and str(self.location) else self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"category": str(self.category), "message": self.message}
        if self.location:
            out["location"] = self.location.to_dict()
        if self.hint:
            out["hint"] = self.hint
        return out


def _restore_error(cls: type[GuestpullError], message: str, state: dict[str, Any]) -> GuestpullError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class UsageError(GuestpullError):
    category = Category.USAGE


class ConfigError(GuestpullError):
    """A configuration or Init-Data document is malformed or inconsistent."""

    category = Category.CONFIG


class InvalidReferenceError(ConfigError):
    """An image reference does not follow the grammar."""


class NetworkError(GuestpullError):
    category = Category.NETWORK


class TLSError(GuestpullError):
    category = Category.TLS


class AuthError(GuestpullError):
    category = Category.AUTH


class HTTPStatusError(GuestpullError):
    category = Category.HTTP_STATUS

    def __init__(self, message: str, *, status: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "status": self.status}


class NotFoundError(GuestpullError):
    category = Category.NOT_FOUND


class BlockedError(GuestpullError):
    category = Category.BLOCKED


class PlatformError(GuestpullError):
    category = Category.PLATFORM


class DigestError(GuestpullError):
    category = Category.DIGEST


class UnsupportedError(GuestpullError):
    """A media type, manifest schema or feature guestpull does not handle."""

    category = Category.UNSUPPORTED


class PolicyError(GuestpullError):
    category = Category.POLICY


class PolicyRejected(PolicyError):
    """The signature policy rejected an image; ``decision`` is the verdict as plain data
    (scope, requirements, why)."""

    def __init__(self, message: str, *, decision: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.decision = decision

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "decision": self.decision}


class UnpackError(GuestpullError):
    category = Category.UNPACK


class NoSpaceError(GuestpullError):
    category = Category.NO_SPACE


class StoreError(UnpackError):
    """The image store on disk is damaged (meta.db unreadable); ``store check`` repairs it."""


class PullTimeoutError(GuestpullError):
    category = Category.TIMEOUT


class ExistsError(GuestpullError):
    """A target (bundle, output file) exists and ``--force`` was not given."""

    category = Category.EXISTS


@dataclass
class Attempt:
    """One pull candidate tried, and why it failed."""

    reference: str
    scheme: str
    kind: str
    error: GuestpullError

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "scheme": self.scheme,
            "kind": self.kind,
            "error": self.error.to_dict(),
        }


class AllCandidatesFailed(GuestpullError):
    """Every pull candidate failed; the category is that of the last attempt's cause, unless
    a candidate's image was rejected by the signature policy: then it is ``policy``, so that a
    refused image never reads as a network problem of the candidate tried after it."""

    def __init__(self, image: str, attempts: list[Attempt]) -> None:
        # One line (the CLI's rule for every error); ``to_dict`` keeps the attempts apart.
        tried = "; ".join(
            f"{a.reference} ({a.scheme}, {a.kind}): [{a.error.category}] {a.error}" for a in attempts
        )
        super().__init__(f"failed to pull {image} from every candidate: {tried}")
        self.image = image
        self.attempts = attempts

    @property
    def category(self) -> Category:  # type: ignore[override]
        if any(a.error.category == Category.POLICY for a in self.attempts):
            return Category.POLICY
        return self.attempts[-1].error.category if self.attempts else Category.INTERNAL

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "attempts": [a.to_dict() for a in self.attempts]}


@dataclass
class Finding:
    """A lint result: an error (the guest will refuse it) or a warning (it may fail upstream)."""

    severity: str  # "error" | "warning" | "info"
    code: str
    message: str
    location: Location = field(default_factory=Location)

    def __str__(self) -> str:
        where = str(self.location)
        return f"{self.severity}: {where + ': ' if where else ''}{self.message} [{self.code}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "location": self.location.to_dict(),
        }


class InternalError(GuestpullError):
    """A failure guestpull did not expect: a bug, shown as one line (``--debug`` for more)."""

    category = Category.INTERNAL


#: errno → the error class a user sees for a path they gave that cannot be used.
_OS_ERRORS: dict[int, type[GuestpullError]] = {
    errno.ENOENT: NotFoundError,
    errno.EEXIST: ExistsError,
    errno.ENOSPC: NoSpaceError,
    errno.EDQUOT: NoSpaceError,
    errno.ENOTDIR: UsageError,
    errno.EISDIR: UsageError,
    errno.EACCES: UsageError,
    errno.EPERM: UsageError,
    errno.EROFS: UsageError,
    errno.ENAMETOOLONG: UsageError,
    errno.ELOOP: UsageError,
    errno.EBUSY: UsageError,
    errno.EXDEV: UsageError,
}


def from_os_error(err: OSError, action: str, path: str | os.PathLike[str] | None = None) -> GuestpullError:
    """The typed error for ``err`` raised while doing ``action`` (e.g. "create the image store")
    on ``path``: a missing path is not-found, a full disk no-space, an unusable path
    (read-only, not a directory, no permission) usage; anything else internal."""
    cls = _OS_ERRORS.get(err.errno or 0, InternalError)
    reason = err.strerror or type(err).__name__
    where = path if path is not None else err.filename
    if err.filename is not None and where is not None and _nested(os.fspath(err.filename), os.fspath(where)):
        reason += f" ({os.fspath(err.filename)})"  # the part of ``where`` the kernel refused
    return cls(f"cannot {action}: {reason}", location=Location(file=os.fspath(where)) if where else None)


def _nested(refused: str | bytes, given: str | bytes) -> bool:
    """Whether ``refused`` is an ancestor or a descendant of ``given`` (not the same path,
    nor a sibling such as a temp file, whose name would only be noise)."""
    refused, given = os.fsdecode(refused), os.fsdecode(given)
    if refused == given:
        return False
    try:
        common = os.path.commonpath([refused, given])
    except ValueError:  # one relative, one absolute
        return False
    return common in (refused, given)
