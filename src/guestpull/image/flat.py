"""The cached flat rootfs: a copy-mode rootfs kept per layer chain, copied into each bundle.

A copy-mode pull applies every layer blob in order (:func:`guestpull.image.rootfs.unpack_blob`).
A re-pull of the same image would do all of that again, so the store keeps the flattened result
per layer chain (the OCI ChainID of the diff_ids; :class:`guestpull.image.store.FlatStore`) and a
bundle gets a *copy* of it: never hard links (the container writes its rootfs), never the cache
itself (it stays pristine).  This is what containerd's native snapshotter does.

The copy (:func:`copy_tree`) preserves what the applier wrote: owner, mode (after the owner,
so setuid/setgid survive), atime/mtime, xattrs (after the owner: chown clears
``security.capability``), hard links (an inode map), symlinks, devices and FIFOs, and each
directory's mode and times last.  It is fd-based: every directory is opened with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` below the two roots, every entry with
``O_NOFOLLOW``, so no symlink in either tree is ever followed.  The destination is a fresh,
empty directory this process made.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from guestpull.errors import NoSpaceError, UnpackError, shown
from guestpull.image.fsops import (
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    openat2,
)

#: A cache directory (``Store.flats``) holds the rootfs and the applier's warnings from
#: building it, which every bundle copied from it reports again.
FLAT_ROOTFS = "rootfs"
FLAT_WARNINGS = "warnings.json"

_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
#: Reading the cache must not change it: without O_NOATIME every copy would move the atime of
#: what it read, and the next bundle would get that.  (It needs the file's owner or
#: CAP_FOWNER: the cache was built by this same user.  readlink still moves a symlink's atime.)
_SRC_DIR_OPEN = _DIR_OPEN | os.O_NOATIME
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NOATIME
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: copy_file_range moves at most this much per call (the kernel caps a call near 2 GiB).
_CHUNK = 1 << 30
_NO_COPY_FILE_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
#: Paths shorter than this (in characters, so at most 4 bytes each) open in one openat2;
#: longer ones are walked in steps of fewer bytes than PATH_MAX (4096).
_PATH_STEP = 1024


def chain_id(diff_ids: Sequence[str]) -> str:
    """The OCI ChainID of layers ``diff_ids`` (bottom first); ValueError for none.

    ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln)).
    """
    if not diff_ids:
        raise ValueError("a layer chain needs at least one layer")
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


# --- the copier --------------------------------------------------------------------------------


@dataclass
class CopyStats:
    files: int = 0
    dirs: int = 0
    links: int = 0
    others: int = 0
    bytes: int = 0


@dataclass
class _Dir:
    rel: str  # "" for the root, else "a/b" below it
    st: os.stat_result


@dataclass
class _Copier:
    """One copy of ``src`` onto the empty directory ``dst``."""

    src_root: int
    dst_root: int
    privileged: bool
    stats: CopyStats = field(default_factory=CopyStats)
    #: the first path copied for each multiply-linked inode (dev, ino) → its destination
    inodes: dict[tuple[int, int], str] = field(default_factory=dict)
    #: (first path, another path) of each extra hard link, made once every file exists
    links: list[tuple[str, str]] = field(default_factory=list)
    #: every directory, parents before children; their mode and times are set last
    dirs: list[_Dir] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._euid, self._egid = os.geteuid(), os.getegid()

    def run(self) -> None:
        root_st = os.fstat(self.src_root)
        self._owner_xattrs(self.src_root, self.dst_root, root_st)
        self.dirs.append(_Dir("", root_st))
        # One thread: two threads splitting the directories cost 1.8x the CPU (kernel
        # contention on tmpfs) and were slower (logsize tree: 0.62 s -> 0.76 s wall).
        pending = [""]
        while pending:
            pending.extend(self._directory(pending.pop()))
        self._make_links()
        self._directory_metadata()

    def _open_dir(self, root: int, rel: str) -> int:
        flags = _SRC_DIR_OPEN if root == self.src_root else _DIR_OPEN
        if not rel:
            return os.dup(root)
        if len(rel) < _PATH_STEP:  # the usual case: one openat2
            return openat2(root, rel, flags, resolve=_RESOLVE)
        return _open_long(root, rel, flags)

    def _directory(self, rel: str) -> list[str]:
        """Copy one directory's entries; returns its subdirectories (created, still empty)."""
        try:
            sfd = self._open_dir(self.src_root, rel)
            try:
                dfd = self._open_dir(self.dst_root, rel)
                try:
                    return self._entries(sfd, dfd, rel)
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
        except OSError as exc:
            raise _copy_error(exc, rel or ".") from exc

    def _entries(self, sfd: int, dfd: int, rel: str) -> list[str]:
        subdirs = []
        with os.scandir(sfd) as it:
            names = [entry.name for entry in it]
        for name in names:
            path = f"{rel}/{name}" if rel else name
            try:
                st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    self._mkdir(sfd, dfd, name, st)
                    self.dirs.append(_Dir(path, st))
                    subdirs.append(path)
                elif st.st_nlink > 1 and self._linked(path, st):
                    pass
                elif stat.S_ISREG(st.st_mode):
                    self._file(sfd, dfd, name, st)
                elif stat.S_ISLNK(st.st_mode):
                    self._symlink(sfd, dfd, name, st)
                else:
                    self._special(sfd, dfd, name, st)
            except OSError as exc:
                raise _copy_error(exc, path) from exc
        return subdirs

    def _linked(self, path: str, st: os.stat_result) -> bool:
        """False for the first path of a multiply-linked inode (copy it); the others are
        linked to it once every file is copied."""
        first = self.inodes.setdefault((st.st_dev, st.st_ino), path)
        if first == path:
            return False
        self.links.append((first, path))
        return True

    def _make_links(self) -> None:
        for first, path in self.links:
            try:
                self._link(first, path)
            except OSError as exc:
                raise _copy_error(exc, path) from exc
            self.stats.links += 1

    def _link(self, first: str, path: str) -> None:
        src_parent, _, src_leaf = first.rpartition("/")
        dst_parent, _, dst_leaf = path.rpartition("/")
        src_dir = self._open_dir(self.dst_root, src_parent)
        try:
            dst_dir = self._open_dir(self.dst_root, dst_parent)
            try:
                os.link(src_leaf, dst_leaf, src_dir_fd=src_dir, dst_dir_fd=dst_dir,
                        follow_symlinks=False)
            finally:
                os.close(dst_dir)
        finally:
            os.close(src_dir)

    def _mkdir(self, sfd: int, dfd: int, name: str, st: os.stat_result) -> None:
        os.mkdir(name, 0o700, dir_fd=dfd)
        src = os.open(name, _SRC_DIR_OPEN | os.O_CLOEXEC, dir_fd=sfd)
        try:
            dst = os.open(name, _DIR_OPEN | os.O_CLOEXEC, dir_fd=dfd)
            try:
                self._owner_xattrs(src, dst, st)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        self.stats.dirs += 1

    def _file(self, sfd: int, dfd: int, name: str, st: os.stat_result) -> None:
        src = os.open(name, _READ_FLAGS, dir_fd=sfd)
        try:
            dst = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=dfd)
            try:
                if st.st_size:
                    _copy_data(src, dst, st)
                self._owner_xattrs(src, dst, st)
                os.fchmod(dst, stat.S_IMODE(st.st_mode))
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dst)
        finally:
            os.close(src)
        self.stats.files += 1
        self.stats.bytes += st.st_size

    def _symlink(self, sfd: int, dfd: int, name: str, st: os.stat_result) -> None:
        os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
        self._by_name(sfd, dfd, name, st)
        self.stats.others += 1

    def _special(self, sfd: int, dfd: int, name: str, st: os.stat_result) -> None:
        kind = stat.S_IFMT(st.st_mode)
        os.mknod(name, kind | 0o600, st.st_rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0,
                 dir_fd=dfd)
        # Just made by us and not a symlink, so chmod by name cannot be redirected.
        self._by_name(sfd, dfd, name, st)
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dfd)
        self.stats.others += 1

    def _by_name(self, sfd: int, dfd: int, name: str, st: os.stat_result) -> None:
        """Owner, xattrs and times of a symlink or device node (no fd can be opened on them)."""
        if self.privileged:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        src, dst = f"/proc/self/fd/{sfd}/{name}", f"/proc/self/fd/{dfd}/{name}"
        for xattr in os.listxattr(src, follow_symlinks=False):
            os.setxattr(dst, xattr, os.getxattr(src, xattr, follow_symlinks=False),
                        follow_symlinks=False)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)

    def _owner_xattrs(self, src: int, dst: int, st: os.stat_result) -> None:
        # The owner first: chown clears security.capability (and setuid, set later).
        if self.privileged and (st.st_uid, st.st_gid) != (self._euid, self._egid):
            os.fchown(dst, st.st_uid, st.st_gid)
        for xattr in os.listxattr(src):
            os.setxattr(dst, xattr, os.getxattr(src, xattr))

    def _directory_metadata(self) -> None:
        """Directory modes and times, children before parents (writes change a parent's mtime)."""
        for d in reversed(self.dirs):
            fd = self._open_dir(self.dst_root, d.rel)
            try:
                os.fchmod(fd, stat.S_IMODE(d.st.st_mode))
                os.utime(fd, ns=(d.st.st_atime_ns, d.st.st_mtime_ns))
            except OSError as exc:
                raise _copy_error(exc, d.rel or ".") from exc
            finally:
                os.close(fd)


def _open_long(root: int, rel: str, flags: int) -> int:
    """openat2 a path of any length, a few components at a time (each step < PATH_MAX).

    Writes through in-root symlinks (``l -> a/long/dir`` then ``l/x``) can put a file deeper
    than any entry name, so a real path may be longer than PATH_MAX.
    """
    fd = os.dup(root)
    parts = rel.split("/")
    try:
        while parts:
            step: list[str] = []
            while parts and (not step or len(os.fsencode("/".join(step + parts[:1]))) < _PATH_STEP):
                step.append(parts.pop(0))
            nxt = openat2(fd, "/".join(step), flags, resolve=_RESOLVE)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _copy_data(src: int, dst: int, st: os.stat_result) -> None:
    """All ``st.st_size`` bytes; holes of a sparse file stay holes."""
    if st.st_blocks * 512 < st.st_size:
        for start, end in _data_extents(src, st.st_size):
            _copy_range(src, dst, start, end)
        os.ftruncate(dst, st.st_size)
    else:
        _copy_range(src, dst, 0, st.st_size)


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        offset = end


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    offset = start
    while offset < end:
        try:
            done = os.copy_file_range(src, dst, min(_CHUNK, end - offset), offset, offset)
        except OSError as exc:
            if exc.errno not in _NO_COPY_FILE_RANGE:
                raise
            # Since Linux 5.19 copy_file_range refuses two filesystems (a store on one tmpfs,
            # the bundle on another); sendfile copies in the kernel too.
            os.lseek(dst, offset, os.SEEK_SET)
            done = os.sendfile(dst, src, offset, min(_CHUNK, end - offset))
        if done == 0:
            raise OSError(errno.EIO, "the cached file ended early")
        offset += done


def _copy_error(exc: OSError, path: str) -> UnpackError | NoSpaceError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(
            f"no space left while copying {shown(path)} from the cached rootfs",
            hint="free space there, prune the store, or give the guest more memory",
        )
    return UnpackError(f"copying {shown(path)} from the cached rootfs: {exc.strerror or exc}")


def copy_tree(src: Path, dst: Path, *, privileged: bool) -> CopyStats:
    """Copy the tree at ``src`` onto the empty directory ``dst`` (see the module docstring).

    UnpackError (NoSpaceError when full) names the entry that failed; ``dst`` may then hold a
    partial copy, which the caller removes.
    """
    fds: list[int] = []
    try:
        for path, flags in ((src, _SRC_DIR_OPEN), (dst, _DIR_OPEN)):
            fds.append(os.open(path, flags | os.O_CLOEXEC))
        if os.listdir(fds[1]):
            raise UnpackError(f"rootfs directory {dst} is not empty")
        copier = _Copier(fds[0], fds[1], privileged)
        copier.run()
        return copier.stats
    except OSError as exc:  # at the two roots (an entry's failure is an UnpackError already)
        raise UnpackError(f"cannot copy {src} to {dst}: {exc.strerror or exc}") from exc
    finally:
        for fd in fds:
            os.close(fd)
