"""The layer applier: one function that applies a tar stream onto a directory.

:mod:`guestpull.image.tarstream` only parses (a strict pull parser, much faster than
``tarfile``'s stream mode); every write goes through :class:`guestpull.image.fsops.Tree`, which
resolves paths beneath the root with directory fds.

Two modes, one code path:

* ``overlay`` — the directory is one overlayfs lower layer: ``.wh.NAME`` becomes a 0:0
  character device and ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr.  Needs root.
* ``copy`` — the directory is the flattened rootfs: whiteouts delete what lower layers put
  there (but never what this layer itself created, as umoci and the OCI spec say).

Privilege differences (owners, device nodes, overlay whiteouts, refused xattrs) sit behind one
seam, :class:`guestpull.image.fseval.FsEval`, chosen once per layer.

Names are cleaned as containerd cleans them (:func:`guestpull.image.fsops.split_entry_name`):
a leading ``/`` is relative to the root, ``a/../b`` is ``b``, ``/`` and ``./`` are the root
directory (their mode, owner, xattrs and mtime apply to it, as umoci does; containerd ignores
them); a ``..`` that would climb above the root is refused.

A whiteout below a non-directory (``dir`` made a file earlier in the layer or below, then
``dir/.wh.inner`` — umoci repack writes this) hides nothing, since nothing can exist below a
file: it is a no-op, the tree umoci produces.  containerd refuses such a layer; we follow
umoci because accepting it changes no file and every tool that accepts it agrees on the tree.

Bounded whatever the layer holds (the registry is the attacker): names and hard-link targets
at :data:`~guestpull.image.fsops.MAX_PATH_BYTES`, at most :data:`MAX_ENTRIES` entries, and
per-entry memory of a few dozen bytes (the paths whiteouts spare are a set of hash-chained
ids, directory metadata a packed journal, warnings capped at :data:`MAX_NOTES`).  Removing
trees never recurses (:func:`~guestpull.image.fsops.remove_at`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from guestpull.errors import GuestpullError, NoSpaceError, UnpackError, shown
from guestpull.image.decode import Arriving, LayerReader, open_blob
from guestpull.image.fseval import FsEval, fseval_for
from guestpull.image.fsops import (
    DEFAULT_ACL_XATTR,
    ParentNotDirectory,
    Tree,
    link_target,
    split_entry_name,
)
from guestpull.image.tarstream import Entry, Readable, iter_entries

log = logging.getLogger(__name__)

T = TypeVar("T")

Mode = Literal["overlay", "copy"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
# Overlay's own metadata must never come from image content: a layer could otherwise forge
# opaque dirs, redirects or metacopy files in a lower directory.
_FORBIDDEN_XATTR_PREFIX = "trusted.overlay."

#: Largest entry we accept (a header claiming more is hostile, not big).
MAX_FILE_SIZE = 1 << 40
#: Largest PAX / GNU long-name header; the parser holds one in memory.
MAX_META_HEADER = 1 << 20
#: Most entries one layer may hold.  The largest images we know (full TeX Live, CUDA SDKs,
#: whole-distribution images) hold a few hundred thousand files; 2 million is twice the
#: biggest, while the applier's own memory stays under ~200 MiB (about 90 bytes per entry,
#: mostly the set of paths whiteouts must spare; measured: 1M entries, 141 MiB peak RSS).
MAX_ENTRIES = 2_000_000
#: Warnings and skipped names a layer's stats keep (the rest are counted, not kept).
MAX_NOTES = 100
MAX_PATH_SHOWN = 200
_MAX_ID = (1 << 32) - 1
_MAX_TIME_NS = (1 << 63) - 1  # what utimensat (and our journal) can hold
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Bits an entry is made with before its final mode: nothing group- or world-writable while
#: the layer is being written (a 0777 or 1777 directory gets those bits at the end).
_CREATE_MODE_MASK = 0o755


@dataclass
class LayerStats:
    entries: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    specials: int = 0
    whiteouts: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # the first MAX_NOTES
    warnings: list[str] = field(default_factory=list)  # the first MAX_NOTES
    notes_dropped: int = 0  # warnings beyond MAX_NOTES (logged, not kept)

    def note(self, message: str, skipped: str | None = None) -> None:
        """Keep a warning (and the skipped entry's name) up to :data:`MAX_NOTES`."""
        log.warning("%s", message)
        if len(self.warnings) >= MAX_NOTES:
            self.notes_dropped += 1
            if self.notes_dropped == 1:
                self.warnings.append("more warnings in this layer were logged but not kept")
            return
        self.warnings.append(message)
        if skipped is not None:
            self.skipped.append(skipped[:MAX_PATH_SHOWN])


def apply_layer(
    tar_stream: Readable,
    layer_dir: str | os.PathLike[str],
    *,
    mode: Mode = "overlay",
    privileged: bool | None = None,
) -> LayerStats:
    """Apply one layer tar (already decompressed) onto ``layer_dir``.

    UnpackError names the offending entry; nothing is ever written outside ``layer_dir``.
    The caller owns ``tar_stream`` (and verifies its diff_id after this returns).
    """
    if mode not in ("overlay", "copy"):
        raise ValueError(f"unknown unpack mode {mode!r}")
    applier = _Applier(Tree(layer_dir), mode, fseval_for(privileged), Path(layer_dir))
    try:
        # Parser errors name the entry or the offset (and the entry before it) themselves.
        for entry in iter_entries(tar_stream, max_size=MAX_FILE_SIZE, max_pax_size=MAX_META_HEADER):
            applier.tree.release()
            if applier.stats.entries >= MAX_ENTRIES:
                raise UnpackError(f"layer has more than {MAX_ENTRIES} entries; refused")
            applier.apply(entry)
        try:
            applier.finish()
        except OSError as exc:
            raise UnpackError(f"setting directory modes and times in {layer_dir}: {exc}") from exc
    finally:
        applier.tree.close()
    return applier.stats


class _Applier:
    def __init__(self, tree: Tree, mode: Mode, fs: FsEval, root: Path) -> None:
        self.tree = tree
        self.root = root
        self.mode = mode
        self.fs = fs
        self.stats = LayerStats()
        # Paths this layer created and their ancestors: whiteouts never remove them.
        self.upper = _PathSet()
        # (st_dev, st_ino) of directories whose lower content this layer removed already.
        self.purged: set[tuple[int, int]] = set()
        # Directory mode and mtime are applied at the end (children change the mtime, and a
        # read-only directory would block its own children when unprivileged).
        self.dir_meta = _DirJournal()
        self.xattr_unsupported = False
        # Permission bits a new file keeps from its open() mode (none assumed when the umask
        # is unknown: every file then takes an fchmod).
        self._umask_kept = _CREATE_MODE_MASK & ~umask if (umask := _current_umask()) is not None else 0
        # In a tree that was empty when the layer began (every overlay layer, a copy rootfs's
        # first), each directory is one this layer made: none is setgid or has a default ACL
        # until finish(), unless the root passes it on or the layer sets a default ACL.
        self._all_plain = _is_empty(tree.fd) and tree.creates_as_asked(tree.fd)

    # --- dispatch ------------------------------------------------------------------------

    def apply(self, info: Entry) -> None:
        self.stats.entries += 1
        try:
            self._apply(info)
        except GuestpullError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(
                    f"no space left in {self.root} while unpacking entry {shown(info.name)}",
                    hint="free space there, prune the store, or give the guest more memory",
                ) from exc
            raise UnpackError(f"entry {shown(info.name)}: {exc.strerror or exc}") from exc
        except (OverflowError, ValueError) as exc:
            raise UnpackError(f"entry {shown(info.name)}: {exc}") from exc

    def _apply(self, info: Entry) -> None:
        parts = split_entry_name(info.name)
        self._check_header(info)
        if not parts:
            self._root_entry(info)
            return
        leaf = parts[-1]
        if leaf.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, info)
            return
        if info.isreg():
            self._regular(info, parts)
        elif info.isdir():
            self._directory(info, parts)
        elif info.issym():
            self._symlink(info, parts)
        elif info.islnk():
            self._hardlink(info, parts)
        elif info.isfifo() or info.ischr() or info.isblk():
            self._special(info, parts)
        else:
            raise UnpackError(f"entry {shown(info.name)}: unsupported tar entry type {info.type!r}")
        self.upper.add(parts)

    def _check_header(self, info: Entry) -> None:
        # The parser already refused sizes above MAX_FILE_SIZE and negative numbers.
        if not (0 <= info.uid <= _MAX_ID and 0 <= info.gid <= _MAX_ID):
            raise UnpackError(f"entry {shown(info.name)}: uid/gid {info.uid}/{info.gid} out of range")
        if info.mtime_ns > _MAX_TIME_NS:
            raise UnpackError(f"entry {shown(info.name)}: mtime {info.mtime} out of range")

    # --- creating entries ----------------------------------------------------------------

    def _replacing(self, dfd: int, name: str, create: Callable[[], T]) -> T:
        """``create()`` the entry; if something is already there (a lower layer's, or an
        earlier entry's), remove it and create again — a later entry wins, as in tar."""
        try:
            return create()
        except FileExistsError:
            self.tree.remove(dfd, name)
            return create()


    def _regular(self, info: Entry, parts: tuple[str, ...]) -> None:
        dfd, name = self.tree.parent_of(parts, entry=info.name)
        # Made with the entry's permission bits (the creating open may write whatever they
        # say) but no group/other write, so the fchmod is needed only for those, for
        # setuid/setgid/sticky, or for bits the umask took.
        mode = info.mode & 0o7777
        try:  # _replacing without its closure: this runs for every file
            fd = os.open(name, _CREATE_FLAGS, mode & _CREATE_MODE_MASK, dir_fd=dfd)
        except FileExistsError:
            self.tree.remove(dfd, name)
            fd = os.open(name, _CREATE_FLAGS, mode & _CREATE_MODE_MASK, dir_fd=dfd)
        try:
            if info.size:
                info.write_to(fd)
            plain = self._all_plain or self.tree.creates_as_asked(dfd)
            self.fs.chown(fd, info.uid, info.gid, fresh=plain)
            # After chown: chown clears setuid/setgid, so the mode goes second.
            if not plain or mode & self._umask_kept != mode:
                os.fchmod(fd, mode)
            if info.xattrs:
                self._xattrs(info, fd=fd)
            os.utime(fd, ns=(info.mtime_ns, info.mtime_ns))
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.bytes += info.size

    def _directory(self, info: Entry, parts: tuple[str, ...]) -> None:
        dfd, name = self.tree.parent_of(parts, entry=info.name)
        # Made with the entry's permission bits (plus the owner's, or an unprivileged run could
        # not fill it; no group/other write), so the end-of-layer pass rarely needs a chmod.
        made_mode = (info.mode & _CREATE_MODE_MASK) | 0o700
        existed = False
        try:
            os.mkdir(name, made_mode, dir_fd=dfd)
        except FileExistsError:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                existed = True
            else:
                self.tree.remove(dfd, name)
                os.mkdir(name, made_mode, dir_fd=dfd)
        fd = self.tree.subdir_fd(dfd, parts)
        self.fs.chown(fd, info.uid, info.gid, fresh=not existed and self._creates_as_asked(dfd))
        if existed:
            self._clear_xattrs(fd, info)
        if info.xattrs:
            self._xattrs(info, fd=fd)
        self._defer_dir(parts, fd, info, existed=existed)
        self.stats.dirs += 1

    def _symlink(self, info: Entry, parts: tuple[str, ...]) -> None:
        if not info.linkname:
            raise UnpackError(f"entry {shown(info.name)}: symlink with an empty target")
        dfd, name = self.tree.parent_of(parts, entry=info.name)
        self._replacing(dfd, name, lambda: os.symlink(info.linkname, name, dir_fd=dfd))
        self.fs.lchown(dfd, name, info.uid, info.gid)
        self._xattrs(info, path=f"/proc/self/fd/{dfd}/{name}")
        os.utime(name, ns=_times(info), dir_fd=dfd, follow_symlinks=False)
        self.stats.symlinks += 1

    def _hardlink(self, info: Entry, parts: tuple[str, ...]) -> None:
        target = link_target(info.name, info.linkname)
        if not target:
            raise UnpackError(
                f"entry {shown(info.name)}: hard link target {shown(info.linkname)} is outside the root"
            )
        if target == parts:
            return  # a link to itself: nothing to do, and clobbering would delete the file
        try:
            sfd, sname = self.tree.parent_of(target, create=False, entry=info.name)
            os.stat(sname, dir_fd=sfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            where = "this layer" if self.mode == "overlay" else "the root"
            raise UnpackError(
                f"entry {shown(info.name)}: hard link target {shown(info.linkname)} does not exist in {where}"
            ) from None
        dfd, name = self.tree.parent_of(parts, entry=info.name)
        self._replacing(dfd, name, lambda: os.link(
            sname, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False))
        self.stats.hardlinks += 1

    def _special(self, info: Entry, parts: tuple[str, ...]) -> None:
        if not info.isfifo() and not self.fs.makes_devices:
            self.stats.note(f"entry {shown(info.name)}: device node skipped (needs privileges)",
                            skipped=info.name)
            return
        dfd, name = self.tree.parent_of(parts, entry=info.name)
        kind = stat.S_IFIFO if info.isfifo() else stat.S_IFCHR if info.ischr() else stat.S_IFBLK
        device = os.makedev(info.devmajor, info.devminor) if not info.isfifo() else 0
        self._replacing(dfd, name, lambda: os.mknod(name, kind | 0o600, device, dir_fd=dfd))
        self.fs.lchown(dfd, name, info.uid, info.gid)
        # Just created by us as a non-symlink, so chmod by name cannot be redirected.
        os.chmod(name, info.mode & 0o7777, dir_fd=dfd)
        self._xattrs(info, path=f"/proc/self/fd/{dfd}/{name}")
        os.utime(name, ns=_times(info), dir_fd=dfd, follow_symlinks=False)
        self.stats.specials += 1

    def _root_entry(self, info: Entry) -> None:
        if not info.isdir():
            self.stats.note(f"entry {shown(info.name)}: non-directory entry for the root skipped",
                            skipped=info.name)
            return
        self.fs.chown(self.tree.fd, info.uid, info.gid, fresh=False)
        self._xattrs(info, fd=self.tree.fd)
        self._defer_dir((), self.tree.fd, info, existed=True)

    # --- whiteouts -----------------------------------------------------------------------

    def _whiteout(self, parts: tuple[str, ...], info: Entry) -> None:
        self.stats.whiteouts += 1
        try:
            self._apply_whiteout(parts, info)
        except ParentNotDirectory:
            # This layer (or a lower one) made a parent a file: nothing below it can be seen,
            # so there is nothing to hide.  umoci repack writes ``dir`` as a file and then
            # ``dir/.wh.x``; umoci applies it as a no-op and so do we (containerd refuses).
            pass

    def _apply_whiteout(self, parts: tuple[str, ...], info: Entry) -> None:
        parent = parts[:-1]
        if parts[-1] == OPAQUE_MARKER:
            if self.mode == "overlay":
                self._overlay_opaque(parent, info)
            else:
                self._purge_lower(parent, keep_top=True, entry=info.name)
            return
        victim = parts[-1][len(WHITEOUT_PREFIX):]
        if victim in ("", ".", ".."):
            raise UnpackError(f"entry {shown(info.name)}: whiteout names no file inside the root")
        target = parent + (victim,)
        if target in self.upper:
            return  # created by this very layer: whiteouts apply to lower layers only
        if self.mode == "overlay":
            self._overlay_whiteout(target, info)
        else:
            self._purge_lower(target, keep_top=False, entry=info.name)

    def _overlay_whiteout(self, target: tuple[str, ...], info: Entry) -> None:
        if not self.fs.makes_devices:  # refused before resolving, so it creates nothing
            raise UnpackError(
                f"entry {shown(info.name)}: overlay layers need privileges (mknod) for whiteouts; "
                "use the copy rootfs mode"
            )
        dfd, name = self.tree.parent_of(target, entry=info.name)
        self._replacing(dfd, name, lambda: os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=dfd))

    def _overlay_opaque(self, parent: tuple[str, ...], info: Entry) -> None:
        fd = self.tree.dir_fd(parent, create=True, entry=info.name)
        try:
            os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
        except OSError as exc:
            raise UnpackError(
                f"entry {shown(info.name)}: cannot mark the directory opaque "
                f"({OVERLAY_OPAQUE_XATTR}): {exc.strerror}; overlay layers need root and a "
                "filesystem with trusted xattrs"
            ) from exc

    def _purge_lower(self, target: tuple[str, ...], *, keep_top: bool, entry: str) -> None:
        """Remove ``target`` (or, for ``keep_top``, its children), sparing this layer's paths."""
        if not target and not keep_top:
            raise UnpackError(f"entry {shown(entry)}: whiteout of the root refused")
        try:
            if target:
                dfd, name = self.tree.parent_of(target, create=False, entry=entry)
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            else:
                dfd, name, st = self.tree.fd, "", os.fstat(self.tree.fd)
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing below to hide
        if not keep_top and target not in self.upper:
            self.tree.remove(dfd, name)
        elif stat.S_ISDIR(st.st_mode):
            self._purge_below(target)

    def _purge_below(self, top: tuple[str, ...]) -> None:
        """Remove what lower layers put below directory ``top``, keeping this layer's paths.

        Iterative: only directories this layer created are descended into (the rest go whole),
        and those are as deep as an entry name at most, but no depth should cost a stack.
        Each directory is listed once per layer: once purged, its subtree holds only this
        layer's entries (later ones add only more of them), so opaque markers repeated or
        nested at every level cost linear work, not quadratic.
        """
        pending = [top]
        while pending:
            self.tree.release()  # nothing is held across directories (see finish)
            path = pending.pop()
            fd = self.tree.dir_fd(path, create=False)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in self.purged:
                continue  # holds only this layer's entries already: listing it again is waste
            self.purged.add((st.st_dev, st.st_ino))
            for child in os.listdir(fd):
                try:
                    child_st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                child_path = path + (child,)
                if child_path not in self.upper:
                    self.tree.remove(fd, child)  # retires cached fds, but closes none yet
                elif stat.S_ISDIR(child_st.st_mode):
                    pending.append(child_path)

    # --- metadata ------------------------------------------------------------------------

    def _defer_dir(self, parts: tuple[str, ...], fd: int, info: Entry, *, existed: bool) -> None:
        st = os.fstat(fd)
        self.dir_meta.append(parts, info.mode & 0o7777, info.mtime_ns, st.st_dev, st.st_ino,
                             repeated=existed)

    def finish(self) -> None:
        """Apply directory modes and mtimes (deepest first), the root's last.

        A directory's newest header wins (a layer may name one directory twice, as umoci
        applies it).  Each directory is set through its cached fd or by name in its parent's,
        so the pass opens only parents that left the cache, not every directory again.
        """
        # Inodes a newer record already set; only directories named again ("repeated":
        # they existed when their header came) can have an older record too.
        done: set[tuple[int, int]] = set()
        for parts, mode, mtime_ns, dev, ino, repeated in self.dir_meta.newest_first():
            # No fd is held from one directory to the next: close what the cache retired, or
            # a layer with more directories than the open-file limit runs out of fds.
            self.tree.release()
            found = self._find_dir(parts)
            if found is None:
                continue
            dfd, name, st = found
            if (st.st_dev, st.st_ino) != (dev, ino) or (dev, ino) in done:
                continue  # replaced later in this layer, or a newer header set it already
            if repeated:
                done.add((dev, ino))
            _set_dir_meta(dfd, name, st, mode, mtime_ns)

    def _find_dir(self, parts: tuple[str, ...]) -> tuple[int, str | None, os.stat_result] | None:
        """(fd, name, lstat) of a journalled directory: its own fd and None while the cache
        holds one (fd calls are half the cost of by-name ones), else its parent's and name."""
        fd = self.tree.cached_dir_fd(parts)
        if fd is not None:
            return fd, None, os.fstat(fd)
        try:
            dfd, name = self.tree.parent_of(parts, create=False)
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError, UnpackError):
            return None  # removed or replaced later in this layer
        return (dfd, name, st) if stat.S_ISDIR(st.st_mode) else None

    def _creates_as_asked(self, dfd: int) -> bool:
        """Tree.creates_as_asked, without asking where the whole tree is known to be plain."""
        return self._all_plain or self.tree.creates_as_asked(dfd)

    def _xattrs(self, info: Entry, *, fd: int | None = None, path: str | None = None) -> None:
        for name, raw in info.xattrs.items():
            if name == DEFAULT_ACL_XATTR:
                self._all_plain = False  # entries made below it take its ACL, not the umask
                self.tree.forget_creation_rules()
            if name.startswith(_FORBIDDEN_XATTR_PREFIX):
                self._warn(f"entry {shown(info.name)}: xattr {shown(name)} ignored (reserved for overlayfs)")
                continue
            if self.xattr_unsupported:
                continue
            try:
                if fd is not None:
                    os.setxattr(fd, name, raw)
                else:
                    assert path is not None
                    os.setxattr(path, name, raw, follow_symlinks=False)
            except OSError as exc:
                self._xattr_failed(info, name, exc)

    def _xattr_failed(self, info: Entry, name: str, exc: OSError) -> None:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            self.xattr_unsupported = True
            self._warn(f"xattrs not supported by the filesystem; skipping them (first: {shown(name)})")
        elif exc.errno == errno.EPERM and self.fs.xattr_refusal_expected(name):
            self._warn(f"entry {shown(info.name)}: xattr {shown(name)} not permitted here; skipped")
        else:
            raise UnpackError(f"entry {shown(info.name)}: cannot set xattr {shown(name)}: {exc.strerror}")

    def _clear_xattrs(self, fd: int, info: Entry) -> None:
        """An existing directory takes exactly the xattrs of its new header (as umoci does)."""
        if self.xattr_unsupported:
            return
        wanted = info.xattrs
        try:
            names = os.listxattr(fd)
        except OSError:
            return
        for name in names:
            if name not in wanted and not name.startswith(("security.", _FORBIDDEN_XATTR_PREFIX)):
                try:
                    os.removexattr(fd, name)
                except OSError:
                    pass

    def _warn(self, message: str) -> None:
        self.stats.note(message)


def _current_umask() -> int | None:
    """This process's umask, read without changing it (os.umask would, racing other threads
    that create files); None where /proc does not say (Linux before 4.7)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _is_empty(dir_fd: int) -> bool:
    with os.scandir(dir_fd) as entries:
        return next(entries, None) is None


def _times(info: Entry) -> tuple[int, int]:
    return info.mtime_ns, info.mtime_ns


def _set_dir_meta(dfd: int, name: str | None, st: os.stat_result, mode: int, mtime_ns: int) -> None:
    """Give directory ``name`` in ``dfd`` (``dfd`` itself when None) its final mode and mtime.

    By name: ``st`` is its lstat of a moment ago (a directory, not a symlink), and nothing
    but this applier writes the tree, so chmod (which follows symlinks) reaches that directory.
    """
    if name is None:
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(dfd, mode)
        os.utime(dfd, ns=(mtime_ns, mtime_ns))
        return
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(name, mode, dir_fd=dfd)
    os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=dfd, follow_symlinks=False)


class _PathSet:
    """A set of paths (and all their ancestors) in memory linear in the paths' components.

    A set of tuples holds every prefix of every path: a 2,048-level name costs ~2 million
    tuple slots, and a 32,767-level one gigabytes.  Here a path is a chain of node ids,
    ``id(child) = hash((id(parent), name))``: one int per distinct node, ~60 bytes.  ``hash``
    of a str is keyed per process (SipHash), so a layer cannot aim for a collision; a chance
    one (about n²/2⁶⁴) could only spare one lower-layer file from a whiteout.
    """

    __slots__ = ("_ids", "_parent", "_parent_ids")

    def __init__(self) -> None:
        self._ids: set[int] = set()
        # Entries come directory by directory: the last parent and the ids of its chain
        # (``_parent_ids[i]`` is the id of ``_parent[:i + 1]``) save re-hashing it.
        self._parent: tuple[str, ...] = ()
        self._parent_ids: list[int] = []

    def add(self, parts: tuple[str, ...]) -> None:
        if not parts:
            return
        parent = parts[:-1]
        if parent != self._parent:
            self._move_to(parent)
        self._ids.add(hash((self._parent_ids[-1] if parent else 0, parts[-1])))

    def _move_to(self, parent: tuple[str, ...]) -> None:
        """Make ``parent`` (and its ancestors) known and the current parent."""
        old, ids, depth = self._parent, self._parent_ids, len(parent)
        if depth == len(old) + 1 and parent[:-1] == old:  # a subdirectory of the last one
            node = hash((ids[-1] if ids else 0, parent[-1]))
            self._ids.add(node)
            ids.append(node)
        elif depth < len(old) and old[:depth] == parent:  # an ancestor of the last one
            del ids[depth:]
        else:  # elsewhere: hash only below the part it shares with the last one
            common, limit = 0, min(depth, len(old))
            while common < limit and parent[common] == old[common]:
                common += 1
            del ids[common:]
            node = ids[-1] if ids else 0
            for name in parent[common:]:
                node = hash((node, name))
                self._ids.add(node)
                ids.append(node)
        self._parent = parent

    def __contains__(self, parts: tuple[str, ...]) -> bool:
        node = 0
        for name in parts:
            node = hash((node, name))
        return bool(parts) and node in self._ids

    def __len__(self) -> int:
        return len(self._ids)


_DIR_RECORD = struct.Struct("<IqQQI")  # mode (+ repeated flag), mtime_ns, st_dev, st_ino, path length
_REPEATED_FLAG = 1 << 16  # above every mode bit


class _DirJournal:
    """Directories whose mode and mtime wait for the end of the layer, packed in one buffer.

    A list of tuples cost ~250 bytes per directory; a record here is 32 bytes plus the path.
    """

    def __init__(self) -> None:
        self._data = bytearray()
        self._starts = array("Q")

    def append(self, parts: tuple[str, ...], mode: int, mtime_ns: int, dev: int, ino: int,
               *, repeated: bool = False) -> None:
        path = os.fsencode("/".join(parts))
        self._starts.append(len(self._data))
        flags = _REPEATED_FLAG if repeated else 0
        self._data += _DIR_RECORD.pack(mode | flags, mtime_ns, dev, ino, len(path))
        self._data += path

    def newest_first(self) -> Iterator[tuple[tuple[str, ...], int, int, int, int, bool]]:
        """``(parts, mode, mtime_ns, dev, ino, repeated)``, the last appended first."""
        for start in reversed(self._starts):
            mode, mtime_ns, dev, ino, length = _DIR_RECORD.unpack_from(self._data, start)
            begin = start + _DIR_RECORD.size
            path = os.fsdecode(bytes(self._data[begin:begin + length]))
            parts = tuple(path.split("/")) if path else ()
            yield parts, mode & ~_REPEATED_FLAG, mtime_ns, dev, ino, bool(mode & _REPEATED_FLAG)

    def __len__(self) -> int:
        return len(self._starts)


def unpack_file(
    blob: str, media_type: str, diff_id: str, dest: str, *, mode: Mode, privileged: bool | None,
    arriving: Arriving | None = None,
) -> LayerStats:
    """Decode the blob file, apply it onto ``dest``, verify the diff_id.

    Module-level and given only strings, so a worker process can run it.  ``arriving``: the
    blob is still being downloaded into ``blob`` (:class:`~guestpull.image.decode.ArrivingBlob`).
    """
    with open_blob(blob, arriving) as raw, LayerReader(
        raw, media_type, diff_id, name=f"layer {os.path.basename(blob)}"
    ) as reader:
        stats = apply_layer(reader, dest, mode=mode, privileged=privileged)
        reader.verify()
    return stats
