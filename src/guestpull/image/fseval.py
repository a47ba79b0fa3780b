"""What the layer applier does differently with and without privileges, in one place.

Like umoci's ``fseval``: the applier (:mod:`guestpull.image.unpack`) makes every file the same
way and asks this seam the few questions whose answer depends on privileges — whether to
change owners, whether device nodes (and so overlay whiteouts, which are 0:0 character
devices) can be made, and whether a refused xattr is expected or an error.  The choice is
made once per layer (:func:`fseval_for`), never per entry.
"""

from __future__ import annotations

import os
from typing import Protocol

#: A refused xattr in this namespace is expected even as root: the kernel refuses ``user.*``
#: on symlinks and device nodes.
_USER_XATTR_PREFIX = "user."


class FsEval(Protocol):
    """The privilege-dependent operations of unpacking."""

    #: Whether device nodes can be made (``mknod`` of a character or block device needs
    #: CAP_MKNOD); FIFOs need no privilege and do not ask.
    makes_devices: bool

    def chown(self, fd: int, uid: int, gid: int, *, fresh: bool) -> None:
        """Give the open file ``fd`` the entry's owner; ``fresh``: we have just created it in a
        directory that is not setgid, so it has our ids."""
        ...

    def lchown(self, dir_fd: int, name: str, uid: int, gid: int) -> None:
        """Give ``name`` in ``dir_fd`` the entry's owner, without following a symlink."""
        ...

    def xattr_refusal_expected(self, name: str) -> bool:
        """Whether EPERM when setting xattr ``name`` is a warning (else an error)."""
        ...


class Privileged:
    """Root: owners as the layer says, device nodes, every xattr namespace."""

    makes_devices = True

    def __init__(self) -> None:
        self._euid, self._egid = os.geteuid(), os.getegid()

    def chown(self, fd: int, uid: int, gid: int, *, fresh: bool) -> None:
        if fresh and uid == self._euid and gid == self._egid:
            return  # a file we just created already has our ids
        os.fchown(fd, uid, gid)

    def lchown(self, dir_fd: int, name: str, uid: int, gid: int) -> None:
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)

    def xattr_refusal_expected(self, name: str) -> bool:
        return name.startswith(_USER_XATTR_PREFIX)


class Unprivileged:
    """Not root: every file is ours, no device nodes, and privileged xattrs are skipped."""

    makes_devices = False

    def chown(self, fd: int, uid: int, gid: int, *, fresh: bool) -> None:
        pass  # we cannot give files away; they stay ours

    def lchown(self, dir_fd: int, name: str, uid: int, gid: int) -> None:
        pass

    def xattr_refusal_expected(self, name: str) -> bool:
        return True  # trusted.*, security.* and others need privileges we do not have


def fseval_for(privileged: bool | None) -> FsEval:
    """The seam for ``privileged`` (``None``: whether the effective uid is root)."""
    if privileged is None:
        privileged = os.geteuid() == 0
    return Privileged() if privileged else Unprivileged()
