"""Atomic file writes: every file another process reads goes through here.

A write goes to a temp file in the target's folder, is flushed to disk, renamed over the
target, and the folder is synced so that the rename itself survives a power cut. The temp
file is created the way a plain ``open()`` creates a file (mode 0666 less the umask), so an
output is as readable by other users and programs as the user's umask allows; ``mkstemp``
would make every file 0600.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

#: Filesystems that cannot sync a folder answer one of these; the rename is then as durable as they allow.
_NO_DIR_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def _temp_name(target: Path) -> Path:
    return target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """fsync a folder, so that renames and new entries in it are on disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so that no thread sees it changed)."""
    try:
        with open("/proc/self/status", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def finish_tree(folder: str | os.PathLike[str]) -> None:
    """Ready a folder a library wrote (safetensors makes its files 0600) for the rename into place:
    every file and folder gets the mode a plain ``open()``/``mkdir`` gives under the umask, and is
    synced to disk."""
    mask = current_umask()
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            os.chmod(path, 0o666 & ~mask)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(root, 0o777 & ~mask)
        sync_folder(root)


def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Rename ``source`` over ``target`` (same folder) and sync the folder."""
    os.replace(source, target)
    sync_folder(Path(target).parent)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, a rename and a folder sync.

    ``durable=False`` skips the fsyncs (file and folder): for caches, which a reader re-creates
    when a crash lost them; the rename still makes the write atomic.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    while True:
        tmp = _temp_name(target)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if durable:
            replace(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """Read a JSON file, returning ``default`` when it is missing, unreadable or holds any bytes
    that are not JSON (half-written, not UTF-8); core/runs/readers.py also says which file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError, RecursionError):
        return default


#: A text file the user names (a run config, a kohya config, a prompts file) is read up to this size.
TEXT_LIMIT = 16 * 1024 * 1024


def read_user_text(path: str | os.PathLike[str], limit: int = TEXT_LIMIT) -> str:
    """The UTF-8 text of a small file the user named.

    A device, pipe or socket (``/dev/zero``) or a file over ``limit`` bytes raises OSError naming
    the path instead of blocking or filling memory; a folder raises IsADirectoryError as open() does.
    """
    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | getattr(os, "O_NONBLOCK", 0))) as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a device, pipe or socket)", str(path))
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit // (1024 * 1024)} MiB, too large for a text file sdtui reads", str(path))
    return data.decode("utf-8")
