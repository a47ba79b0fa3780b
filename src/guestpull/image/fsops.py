"""Safe filesystem primitives: every path is resolved beneath a root through directory fds.

The rule (one place for it): a path inside a layer is walked component by component from the
root's fd with ``O_NOFOLLOW``, so no symlink is ever followed by the kernel on our behalf.  When a
*parent* component is a symlink, its target is read and resolved lexically: a relative target
that stays inside the root (``lib -> usr/lib``) is followed, an absolute target or one that
climbs out with ``..`` is refused with :class:`~guestpull.errors.UnpackError` — writing through
it would land outside the root when seen from the host.  Symlinks are always *created* verbatim;
only writing through them is restricted.

Reading a file *as the container would see it* (``/etc/passwd`` of a rootfs) uses
``openat2(RESOLVE_IN_ROOT)`` instead: there absolute symlinks are meant relative to the root.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from guestpull.errors import UnpackError, shown

# --- openat2 ---------------------------------------------------------------------------------

SYS_OPENAT2 = 437  # the same number on every Linux architecture (new syscall table)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """The openat2(2) system call; OSError as ``os.open`` would raise it."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _libc.syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def read_in_root(root: str | os.PathLike[str], path: str, limit: int = 4 << 20) -> bytes | None:
    """Read ``path`` as a process chrooted at ``root`` would (symlinks clamped to the root).

    Returns None when the file does not exist.  Reads at most ``limit`` bytes.
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = openat2(
                root_fd,
                path.lstrip("/"),
                os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK,
                resolve=RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
            )
        except FileNotFoundError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(limit)
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)


# --- entry names -----------------------------------------------------------------------------


#: Longest entry name or hard-link target accepted, in bytes: Linux's PATH_MAX.  No path a
#: container can open is longer, and it bounds the depth too (at most 2,048 components,
#: ``a/a/…``), so the work per entry stays linear and small.
MAX_PATH_BYTES = 4096


def split_entry_name(name: str) -> tuple[str, ...]:
    """A tar entry name as path components, cleaned as containerd does; the root is ``()``.

    ``./a//b/`` → ``("a", "b")``; a leading ``/`` is relative to the root (``tar -P`` and
    ``umoci insert … /`` write such names); ``a/../b`` → ``("b",)`` (lexically, like Go's
    ``filepath.Clean``).  UnpackError for a ``..`` that climbs above the root (containerd
    clamps it, we refuse it: no honest tool writes one), a NUL byte, or a name longer than
    :data:`MAX_PATH_BYTES`.
    """
    if len(name) * 4 > MAX_PATH_BYTES:  # _check_path_size's own first test, without the call
        _check_path_size(name, name)
    if "\0" in name:
        raise UnpackError(f"entry {shown(name)}: NUL byte in name")
    raw = name.split("/")
    # The common case (``a/b/c``, or ``a/b/`` for a directory) needs no filtering.
    if raw[-1] == "":
        raw.pop()
    if "" not in raw and "." not in raw and ".." not in raw:
        return tuple(raw)
    parts = normalize_inside((), name)
    if parts is None:
        raise UnpackError(f"entry {shown(name)}: '..' climbs above the root; refused")
    return parts


def _check_path_size(path: str, entry: str) -> None:
    # A character is at most 4 bytes in UTF-8 (surrogate escapes are 1): encode only when needed.
    if len(path) * 4 > MAX_PATH_BYTES and len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise UnpackError(
            f"entry {shown(entry)}: path of {len(os.fsencode(path))} bytes refused "
            f"(limit {MAX_PATH_BYTES}, Linux's PATH_MAX)"
        )


def normalize_inside(base: Sequence[str], target: str) -> tuple[str, ...] | None:
    """Lexically resolve ``target`` relative to directory ``base`` (both inside the root).

    Absolute targets are taken relative to the root; None when ``..`` climbs above the root.
    """
    out = [] if target.startswith("/") else list(base)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                return None
            out.pop()
        else:
            out.append(part)
    return tuple(out)


def link_target(entry: str, target: str) -> tuple[str, ...] | None:
    """A hard-link target as path components (root-relative, cleaned); None if it escapes."""
    _check_path_size(target, entry)
    return normalize_inside((), target)


# --- the resolver ----------------------------------------------------------------------------

_MAX_SYMLINKS = 40
#: Directory fds a Tree keeps open at most, as a share of the process's open-file limit.
_CACHE_SHARE_OF_FD_LIMIT = 0.5
#: Most directory fds a Tree keeps, whatever the limit: each cached path costs ~800 bytes of
#: Python objects, and past a couple of thousand the hit rate gains nothing measurable (a
#: 55,000-entry layer of deep directories: 10,000 → 2,048 gives 7 MiB less RSS per unpacking
#: process, CPU within noise; issue 15's memory goal counts every worker).
_MAX_CACHED_DIRS = 2048


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as containerd does); return it.

    The default soft limit of 1024 makes a Tree over a tree of thousands of directories
    evict and re-open directory fds over and over.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return soft


def _dir_cache_size() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(64, min(_MAX_CACHED_DIRS, int(soft * _CACHE_SHARE_OF_FD_LIMIT)))


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ParentNotDirectory(UnpackError):
    """A parent component of an entry is a file (or device…): nothing can exist below it."""


class Tree:
    """A directory we unpack into.  Resolves paths beneath it and caches directory fds.

    The cache holds only directories reached through verified fds.  Anything that removes or
    replaces a directory or symlink must call :meth:`forget` so no stale fd is reused.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, _DIR_FLAGS)
        self._dirs: dict[tuple[str, ...], int] = {(): self.fd}
        # fds handed out by dir_fd since the last release: callers may still use them, so
        # forget() retires these and closes the rest at once (open fds stay near the cache size).
        self._handed: list[int] = []
        self._retired: list[int] = []
        self._max_cached = _dir_cache_size()
        # creates_as_asked() of cached directory fds (cleared with the cache).
        self._plain: dict[int, bool] = {}

    def close(self) -> None:
        self.forget()
        self.release()
        os.close(self.fd)

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def forget(self) -> None:
        """Drop every cached directory fd except the root's.

        An fd :meth:`dir_fd` returned for the entry in hand may still be in use, so those are
        only retired (:meth:`release` closes them between entries); the others close now.
        """
        handed = set(self._handed)
        self._plain.clear()
        for parts, fd in self._dirs.items():
            if not parts:
                continue
            if fd in handed:
                self._retired.append(fd)
            else:
                os.close(fd)
        self._dirs = {(): self.fd}

    def release(self) -> None:
        """Close retired fds.  Call between entries, when no fd from :meth:`dir_fd` is held."""
        self._handed.clear()
        if self._retired:
            for fd in self._retired:
                os.close(fd)
            self._retired.clear()
            self._plain.clear()  # a retired fd may have been asked about

    def dir_fd(self, parts: tuple[str, ...], *, create: bool, entry: str = "") -> int:
        """An fd for the directory ``parts`` beneath the root (cached; do not close it).

        Missing directories are created 0755 when ``create``; FileNotFoundError otherwise.
        UnpackError when a component is not a directory or is a symlink leaving the root.
        """
        fd = self._dirs.get(parts)
        if fd is None:
            fd = self._walk(parts, create, entry or "/".join(parts), 0)
            if len(self._dirs) >= self._max_cached:
                self.forget()
            self._dirs[parts] = fd
        self._handed.append(fd)
        return fd

    def creates_as_asked(self, fd: int) -> bool:
        """Whether what is made in directory ``fd`` (from :meth:`dir_fd`) gets exactly the
        creator's ids and the mode asked for less the umask.

        Not in a setgid directory (it passes its group, and to subdirectories the setgid bit,
        on) nor in one with a default ACL (it replaces the umask).  Asked once per cached
        directory.
        """
        plain = self._plain.get(fd)
        if plain is None:
            plain = self._plain[fd] = _creates_as_asked(fd)
        return plain

    def forget_creation_rules(self) -> None:
        """Forget what :meth:`creates_as_asked` said: a directory just got a default ACL."""
        self._plain.clear()

    def subdir_fd(self, parent_fd: int, parts: tuple[str, ...]) -> int:
        """:meth:`dir_fd` for ``parts`` when ``parent_fd`` is the fd it gave for ``parts[:-1]``
        and the caller knows ``parts[-1]`` is a directory there: one open, no walk."""
        fd = self._dirs.get(parts)
        if fd is None:
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent_fd)  # O_NOFOLLOW: never a link
            if len(self._dirs) >= self._max_cached:
                self.forget()  # parent_fd was handed out: retired, still open
            self._dirs[parts] = fd
        self._handed.append(fd)
        return fd

    def cached_dir_fd(self, parts: tuple[str, ...]) -> int | None:
        """:meth:`dir_fd` if the cache holds ``parts`` (the root always), else None."""
        fd = self._dirs.get(parts)
        if fd is not None:
            self._handed.append(fd)
        return fd

    def _walk(self, parts: tuple[str, ...], create: bool, entry: str, depth: int) -> int:
        """Open ``parts`` from the deepest cached ancestor; returns a new fd owned by caller.

        The directories on the way are cached while the cache has room (leaving one slot for
        ``parts`` itself): siblings in a deep tree then cost one open each, not one per level.
        """
        start = len(parts)
        while start > 0 and parts[:start] not in self._dirs:
            start -= 1
        fd = self._dirs[parts[:start]]
        if start == len(parts):
            return os.dup(fd)
        owned = False  # whether fd is ours to close (not in the cache)
        try:
            for i in range(start, len(parts)):
                nxt = self._step(fd, parts[: i + 1], create, entry, depth)
                if owned:
                    os.close(fd)
                fd, owned = nxt, True
                if i + 1 < len(parts) and len(self._dirs) < self._max_cached - 1:
                    self._dirs[parts[: i + 1]] = fd
                    owned = False
            return fd
        except BaseException:
            if owned:
                os.close(fd)
            raise

    def _step(self, parent: int, parts: tuple[str, ...], create: bool, entry: str, depth: int) -> int:
        name = parts[-1]
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
        except NotADirectoryError:
            return self._through_symlink(parent, parts, create, entry, depth)
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass  # raced with ourselves through another alias; open it below
        return os.open(name, _DIR_FLAGS, dir_fd=parent)

    def _through_symlink(
        self, parent: int, parts: tuple[str, ...], create: bool, entry: str, depth: int
    ) -> int:
        where = "/".join(parts)
        try:
            target = os.readlink(parts[-1], dir_fd=parent)
        except OSError:
            raise ParentNotDirectory(
                f"entry {shown(entry)}: parent {shown(where)} is not a directory"
            ) from None
        if depth >= _MAX_SYMLINKS:
            raise UnpackError(
                f"entry {shown(entry)}: too many levels of symlinks at {shown(where)}"
            )
        resolved = None if target.startswith("/") else normalize_inside(parts[:-1], target)
        if resolved is None:
            raise UnpackError(
                f"entry {shown(entry)}: parent {shown(where)} is a symlink to {shown(target)}, "
                "which leads outside the root; refusing to write through it"
            )
        return self._walk(resolved, create, entry, depth + 1)

    def parent_of(self, parts: tuple[str, ...], *, create: bool = True, entry: str = "") -> tuple[int, str]:
        """``(fd of the parent directory, leaf name)`` for a non-root path."""
        return self.dir_fd(parts[:-1], create=create, entry=entry), parts[-1]

    def lstat(self, parts: tuple[str, ...]) -> os.stat_result | None:
        """lstat of ``parts`` (parents resolved safely) or None if it does not exist."""
        if not parts:
            return os.fstat(self.fd)
        try:
            dfd, leaf = self.parent_of(parts, create=False)
            return os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def remove(self, dir_fd: int, name: str) -> None:
        """Remove ``name`` (a whole tree if it is a directory) without following symlinks."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self.forget()
            remove_at(dir_fd, name)
            return
        os.unlink(name, dir_fd=dir_fd)
        if stat.S_ISLNK(st.st_mode):
            # The symlink may have been the cached route to some directory.
            self.forget()


DEFAULT_ACL_XATTR = "system.posix_acl_default"


def _creates_as_asked(fd: int) -> bool:
    if os.fstat(fd).st_mode & stat.S_ISGID:
        return False
    try:
        os.getxattr(fd, DEFAULT_ACL_XATTR)
    except OSError:
        return True  # no default ACL (ENODATA), or none possible here (EOPNOTSUPP)
    return False


def is_dir(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISDIR(st.st_mode)


# --- removing trees --------------------------------------------------------------------------

#: Directory fds :func:`remove_at` keeps open on its way down; deeper levels are re-reached
#: through ``..`` (checked by device and inode), so any depth needs a fixed number of fds.
_REMOVE_OPEN_LEVELS = 64


@dataclass
class _Level:
    """One directory on the way down: its name in the parent and what is left to remove."""

    name: str
    key: tuple[int, int]  # (st_dev, st_ino), to check a re-opened ``..``
    fd: int  # -1 once closed to bound the open fds
    subdirs: list[str] = field(default_factory=list)


def remove_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` under ``dir_fd`` (a whole tree if it is a directory).

    Iterative and fd-based: never follows a symlink, never recurses, so no directory depth a
    layer can build (``shutil.rmtree`` raises RecursionError at ~1,000 levels) stops it.
    Missing is fine; other OSErrors propagate.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    stack = [_open_level(dir_fd, name)]
    try:
        while stack:
            level = stack[-1]
            if level.subdirs:
                stack.append(_open_level(level.fd, level.subdirs.pop()))
                if len(stack) > _REMOVE_OPEN_LEVELS:
                    closing = stack[-_REMOVE_OPEN_LEVELS - 1]
                    os.close(closing.fd)
                    closing.fd = -1
                continue
            stack.pop()
            parent_fd = _reopen_parent(level, stack[-1]) if stack else dir_fd
            os.close(level.fd)
            level.fd = -1
            os.rmdir(level.name, dir_fd=parent_fd)
    finally:
        for level in stack:
            if level.fd >= 0:
                os.close(level.fd)


def remove_path(path: str | os.PathLike[str]) -> None:
    """:func:`remove_at` for a path (its parent is opened normally; the rest fd-based)."""
    target = Path(path)
    try:
        parent = os.open(target.parent, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        remove_at(parent, target.name)
    finally:
        os.close(parent)


def _open_level(parent_fd: int, name: str) -> _Level:
    """Open directory ``name``, delete its non-directories, and list its subdirectories."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        _make_searchable(parent_fd, name)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        st = os.fstat(fd)
        if not st.st_mode & stat.S_IWUSR and os.geteuid() != 0:
            os.fchmod(fd, 0o700)  # a read-only directory of the layer: we delete it anyway
        level = _Level(name, (st.st_dev, st.st_ino), fd)
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    level.subdirs.append(entry.name)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=fd)
        return level
    except BaseException:
        os.close(fd)
        raise


def _make_searchable(parent_fd: int, name: str) -> None:
    """chmod a directory we may not read (mode 000 from a layer) without following links."""
    fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        os.chmod(f"/proc/self/fd/{fd}", 0o700)
    finally:
        os.close(fd)


def _reopen_parent(child: _Level, parent: _Level) -> int:
    """``parent``'s fd, re-opened through the child's ``..`` if it was closed (and verified)."""
    if parent.fd >= 0:
        return parent.fd
    fd = os.open("..", _DIR_FLAGS, dir_fd=child.fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != parent.key:
        os.close(fd)
        raise OSError(f"directory {parent.name!r} moved while it was being removed")
    parent.fd = fd
    return fd
