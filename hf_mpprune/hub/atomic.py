"""Atomic directory replacement: a crash (exception or kill -9) never leaves a half-written checkpoint.

Files are written into `.<name>.mpprune-tmp-<pid>-*` next to the target, fsynced, then swapped in:
on Linux with `renameat2(RENAME_EXCHANGE)` (one atomic step, the target path always names a complete checkpoint),
elsewhere with two renames through `.<name>.mpprune-old-<pid>-*` (a crash between them leaves the previous
checkpoint under that name; the next save to the same target restores it first). Leftovers of dead processes
are cleaned up by the next save to the same target.
"""

import contextlib
import ctypes
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator

from ..core.errors import CheckpointError


logger = logging.getLogger(__name__)

_TMP, _OLD = ".mpprune-tmp-", ".mpprune-old-"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


@contextlib.contextmanager
def atomic_directory(target: str) -> Iterator[str]:
    """Yield a fresh temporary directory; on normal exit it atomically becomes `target` (replacing an existing
    directory only now that the new one is complete); on any exception it is removed and `target` is untouched."""
    target = os.path.abspath(target)
    parent, base = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    _recover(parent, base)
    tmp = tempfile.mkdtemp(prefix=f".{base}{_TMP}{os.getpid()}-", dir=parent)
    try:
        yield tmp
        _set_modes(tmp, target)
        _fsync_tree(tmp)
        _replace(tmp, target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        io = re.search(r"os error (\d+)", str(e)) if type(e).__name__ == "SafetensorError" else None
        if io:  # safetensors reports disk full / read-only as its own type: make it the OSError it is
            raise CheckpointError(
                int(io.group(1)), f"writing {target!r} failed ({e}); the previous contents are unchanged"
            ) from e
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _set_modes(root: str, target: str) -> None:
    """`mkdtemp` / `mkstemp` make 0700 folders and 0600 files: give the tree the modes a plain save gets under the
    user's umask (as transformers' `save_pretrained`), the folder keeping the mode of the one it replaces."""
    mask = _umask()
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)
    keep = os.path.isdir(target) and not os.path.islink(target)
    os.chmod(root, stat.S_IMODE(os.stat(target).st_mode) if keep else 0o777 & ~mask)


def _replace(tmp: str, target: str) -> None:
    if not os.path.exists(target):
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # `tmp` now holds the previous checkpoint
    else:
        parent, base = os.path.split(target)
        old = tempfile.mkdtemp(prefix=f".{base}{_OLD}{os.getpid()}-", dir=parent)
        os.rmdir(old)
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(os.path.dirname(target))


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover(parent: str, base: str) -> None:
    """Remove temp dirs of dead writers; restore a previous checkpoint stranded by a crash between two renames."""
    for name in os.listdir(parent):
        for marker in (_TMP, _OLD):
            prefix = f".{base}{marker}"
            if not name.startswith(prefix):
                continue
            pid = name[len(prefix) :].split("-", 1)[0]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
            path, target = os.path.join(parent, name), os.path.join(parent, base)
            if marker == _OLD and not os.path.exists(target):
                logger.warning("restoring %s from %s (a previous save crashed mid-swap)", target, path)
                os.rename(path, target)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(root: str) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
