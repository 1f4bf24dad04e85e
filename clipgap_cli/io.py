"""Files written whole or not at all, and their hashes: what the run directory, the stack fixes
and every writing command share.

A full disk is reported as such: a write that fails on a full filesystem raises `OSError`
with `errno.ENOSPC` and the destination's name, whatever the writer raised (torch's file
writer says only "unexpected pos"), and leaves no temporary file behind.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMPORARY = ".tmp"  # in the name of atomic_write's temporary files: `.{name}.{random}.tmp{suffix}`


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Make `path` by `write(tmp)` on a temporary sibling, fsync it and rename it into place.

    If `write` fails or the process dies, `path` keeps its previous content: a reader
    sees either the old file or the whole new one. The temporary file keeps the suffix of
    `path`, for writers that infer the format from it. A write that fails for want of space
    raises `no_space(path)`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f"{TEMPORARY}{path.suffix}", dir=path.parent
        )
    except OSError as err:
        if is_no_space(err):
            raise no_space(path) from err
        raise
    # mkstemp makes the file private (0600); give it the mode a plain open() would.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as err:
            # Before the temporary file goes: it holds what filled the disk.
            if is_no_space(err) or filesystem_full(tmp.parent):
                raise no_space(path) from err
            raise
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def no_space(path: Path | str) -> OSError:
    """The error of a write to `path` that found no space left on its device."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def is_no_space(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, is a write that ran out of space (or of
    inodes, or of the user's quota)."""
    return no_space_cause(err) is not None


def no_space_cause(err: BaseException | None) -> OSError | None:
    """The error among `err` and those it was raised from that says a write ran out of space."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def unwritten_file(err: OSError) -> str | None:
    """The file a write that failed with `err` was writing: the error's file name, else (a file
    object's write or close raises without one) the open file the innermost frame that held
    one was writing."""
    if err.filename:
        return str(err.filename)
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
    return None


def filesystem_full(directory: Path) -> bool:
    """Whether the filesystem of `directory` has no block (or no inode) left for this user.

    A writer that cannot say why it failed (torch's zip writer) failed for want of space if,
    right after, the filesystem has none: a write stops short when the last block is taken.
    """
    try:
        fs = os.statvfs(directory)
    except OSError:
        return False
    blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail  # root may use the reserved blocks
    inodes = fs.f_ffree if os.geteuid() == 0 else fs.f_favail
    return blocks * fs.f_frsize < fs.f_bsize or (fs.f_files > 0 and inodes == 0)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
