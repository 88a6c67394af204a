"""Writing a whole file so that readers see the old one or the new one, never half of it.

The one recipe every output follows (endpoint files, ``.npy`` results, ONNX exports, LArCV1 files): write a
temporary file in the target's directory, flush it to disk, give it the mode a new file would have, rename it
onto the target (atomic within a directory), and flush the directory so the rename survives a crash (best
effort: not every filesystem syncs directories).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Union

from ssnet_common.errors import ConfigError

PathLike = Union[str, Path]


def check_output(path: PathLike, force: bool = False) -> Path:
    """The rule of every command that writes a file, checked before any work: :class:`ConfigError` (exit status
    2) unless ``path`` is a file in an existing, writable directory that does not exist yet, or ``force``
    allows replacing it."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"output {str(path)!r} is a directory, not a file")
    if out.exists() and not force:
        raise ConfigError(f"output {str(path)!r} exists: give --force to replace it")
    folder = out.parent
    if not folder.is_dir():
        raise ConfigError(f"output {str(path)!r}: directory {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"output {str(path)!r}: directory {str(folder)!r} is not writable")
    return out


def temporary_beside(path: PathLike, suffix: str = ".tmp") -> Path:
    """A new, empty, closed temporary file in ``path``'s directory (``.<name>.<random><suffix>``)."""
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(name)


def put_in_place(temporary: PathLike, path: PathLike, mode: int = 0o644) -> None:
    """Flush ``temporary`` to disk and rename it onto ``path``; ``mode`` is masked by the umask.  OSError on
    failure (``temporary`` is then still there: the caller removes it)."""
    with open(temporary, "rb+") as written:
        os.fsync(written.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, mode & ~umask)
    os.replace(temporary, path)
    with suppress(OSError):
        directory = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def write_atomically(path: PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file (see the module docstring).  OSError on failure,
    with no file left behind."""
    temporary = temporary_beside(path)
    try:
        temporary.write_bytes(data)
        put_in_place(temporary, path, mode)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
