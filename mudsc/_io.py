"""Atomic file writes: a file appears at its path complete or not at all.

:func:`atomic_path` hands out a fresh temporary path in the target's folder (same file system, so the final
``os.replace`` is an atomic rename), and on success flushes it to disk (``fsync``) and renames it onto the
target; on any error the temporary file is removed and the target is left as it was. The temporary file is
created with mode ``0o666`` minus the umask, the permissions ``open(path, "w")`` would give.

:func:`write_text`, :func:`write_json` and :func:`write_bytes` are the one-call forms.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import Any, Iterator

__all__ = ["atomic_path", "write_bytes", "write_json", "write_text"]


def _create_temporary(path: str) -> str:
    """Create an empty, hidden, uniquely named file ``.mudsc-<name>-<random>.tmp`` next to ``path``; its path."""
    folder, name = os.path.split(path)
    for _ in range(100):
        tmp = os.path.join(folder, f".mudsc-{name[:200]}-{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except FileNotFoundError as exc:
            raise FileNotFoundError(exc.errno, f"cannot write {path}: its folder does not exist", path) from exc
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}", path) from exc
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot write {path}: no free temporary name next to it")  # pragma: no cover


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Context manager yielding a temporary path to write; renamed onto ``path`` when the block succeeds.

    The writer may be anything that takes a file name (``torch.save``, ``np.save`` to an open file,
    ``safetensors.torch.save_file``); it must close the file before the block ends. An error in the block
    removes the temporary file and propagates unchanged; an error while committing names ``path``.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    tmp = _create_temporary(path)
    try:
        yield tmp
        try:
            _fsync(tmp)
            os.replace(tmp, path)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}", path) from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> None:
    """Write ``json.dumps(obj, **dumps_kwargs)`` to ``path`` atomically."""
    write_text(path, json.dumps(obj, **dumps_kwargs))
