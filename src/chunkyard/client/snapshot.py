"""Snapshots of files, for the spool: a private copy that stays as it was when the
file is written again, even in place.

A hard link is no snapshot: ``open(path, "wb")`` truncates the very inode it shares.
A reflink (``FICLONE``: XFS, Btrfs, bcachefs, OCFS2) is: the clone shares the extents
until either side writes, costs no bytes and takes milliseconds whatever the size.
Where the file system cannot clone (ext4, tmpfs, another file system than the spool's),
the bytes are copied inside the kernel (``copy_file_range``, else ``sendfile``), which
is as fast as the disk writes. Every snapshot is fsynced: a job is only whole once its
bytes are on disk.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

#: ``_IOW(0x94, 9, int)`` from linux/fs.h: make the destination share the source's extents
FICLONE = 0x40049409
#: errors that mean "this file system (pair) cannot clone": copy instead
_NO_CLONE = {
    errno.EOPNOTSUPP,
    errno.ENOTTY,
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOSYS,
    errno.EPERM,
    errno.EBADF,
}
#: bytes per copy_file_range / sendfile call: large, yet a copy of a huge file can fail
#: and fall back part way without losing what was copied
_STEP = 1 << 30


def _clone(src: int, dst: int) -> bool:
    """Reflink ``src`` into ``dst``; False if the file systems cannot."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return False
    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError as exc:
        if exc.errno in _NO_CLONE:
            return False
        raise
    return True


def _copy(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes in the kernel where it can, else through a buffer."""
    done = 0
    for kernel_copy in (getattr(os, "copy_file_range", None), getattr(os, "sendfile", None)):
        if kernel_copy is None:
            continue
        try:
            while done < size:
                if kernel_copy is os.sendfile:
                    n = os.sendfile(dst, src, done, min(_STEP, size - done))
                else:
                    n = kernel_copy(src, dst, min(_STEP, size - done), done, done)
                if n == 0:
                    break
                done += n
            return
        except OSError as exc:
            if exc.errno not in _NO_CLONE:
                raise
    os.lseek(src, done, os.SEEK_SET)
    os.lseek(dst, done, os.SEEK_SET)
    with open(src, "rb", closefd=False) as fi, open(dst, "wb", closefd=False) as fo:
        shutil.copyfileobj(fi, fo, 8 << 20)


def snapshot_file(src: Path, dst: Path) -> tuple[str, int]:
    """Make ``dst`` (new) a snapshot of ``src``, on disk; returns how (``reflink`` or
    ``copy``) and its size."""
    fi = os.open(src, os.O_RDONLY)
    try:
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = os.fstat(fi).st_size
            how = "reflink" if _clone(fi, fo) else "copy"
            if how == "copy":
                _copy(fi, fo, size)
            size = os.fstat(fo).st_size  # what was taken, if the file changed meanwhile
            os.fchmod(fo, stat.S_IMODE(os.fstat(fi).st_mode))  # the push records it
            os.fsync(fo)
        finally:
            os.close(fo)
    finally:
        os.close(fi)
    return how, size


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (a rename into it) durable."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open directories: renames are durable enough there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
