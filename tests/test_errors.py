"""errors.from_os_error: an OSError on a path the user gave becomes a typed error naming it."""

from __future__ import annotations

import errno
import os

import pytest

from guestpull.errors import (
    Category,
    ExistsError,
    InternalError,
    NoSpaceError,
    NotFoundError,
    UsageError,
    from_os_error,
)


@pytest.mark.parametrize(("code", "cls"), [
    (errno.ENOENT, NotFoundError),
    (errno.EEXIST, ExistsError),
    (errno.ENOSPC, NoSpaceError),
    (errno.EDQUOT, NoSpaceError),
    (errno.EROFS, UsageError),
    (errno.EACCES, UsageError),
    (errno.ENOTDIR, UsageError),
    (errno.EISDIR, UsageError),
    (errno.EIO, InternalError),  # not something a user's path causes
])
def test_errno_picks_the_category(code: int, cls: type) -> None:
    err = from_os_error(OSError(code, os.strerror(code), "/w/x"), "open the image store", "/w/x")
    assert type(err) is cls
    assert err.location is not None and err.location.file == "/w/x"
    assert str(err) == f"/w/x: cannot open the image store: {os.strerror(code)}"


def test_the_refused_part_of_the_path_is_named() -> None:
    inner = OSError(errno.ENOTDIR, "Not a directory", "/w/file/content")
    assert str(from_os_error(inner, "open the image store", "/w/file")) == (
        "/w/file: cannot open the image store: Not a directory (/w/file/content)"
    )
    parent = OSError(errno.ENOENT, "No such file or directory", "/proc/x")
    assert str(from_os_error(parent, "open the image store", "/proc/x/y")).endswith("(/proc/x)")


def test_a_sibling_temp_file_is_not_named() -> None:
    temp = OSError(errno.EROFS, "Read-only file system", "/ro/.out.abc123.tmp")
    err = from_os_error(temp, "write the output file", "/ro/out")
    assert str(err) == "/ro/out: cannot write the output file: Read-only file system"
    assert err.category == Category.USAGE and err.exit_code == 2


def test_without_a_path_the_errors_own_filename_is_used() -> None:
    err = from_os_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/a"), "read")
    assert err.location is not None and err.location.file == "/a"


def test_a_policy_rejection_outranks_a_later_candidates_failure() -> None:
    """A mirror served an image the policy refuses; the origin was then unreachable."""
    from guestpull.errors import AllCandidatesFailed, Attempt, EXIT_CODES, NetworkError, PolicyError

    rejected = Attempt("mirror.local/app:v1", "https", "mirror", PolicyError("no signature"))
    unreachable = Attempt("origin.local/app:v1", "https", "original", NetworkError("refused"))
    failed = AllCandidatesFailed("origin.local/app:v1", [rejected, unreachable])
    assert failed.category == Category.POLICY
    assert failed.exit_code == EXIT_CODES[Category.POLICY]
    assert AllCandidatesFailed("x", [unreachable]).category == Category.NETWORK
