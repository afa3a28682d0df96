"""Atomic file writes: every file mvxray writes appears whole or not at all.

A temporary file in the destination folder is written, flushed to disk and renamed over the
destination with ``os.replace`` (atomic on POSIX and Windows); on any error it is removed and
the previous file, if any, is untouched.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Prefix of temporary files and folders (``datasets.format.clean_temporary`` removes leftovers).
TMP_PREFIX = ".tmp-"


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    Args:
        path: the destination file.
        suffix: ending of the temporary name (libraries such as ``np.savez`` append their own
            extension unless the name already ends with it).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with atomic_path(d / "a.txt") as tmp:
        ...     _ = tmp.write_text("hello")
        >>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
        ('hello', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex}{suffix}")
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | Path, doc: Any, indent: int | None = 1) -> Path:
    """Write ``doc`` as JSON to ``path`` atomically; returns ``path``."""
    return atomic_write_text(path, json.dumps(doc, indent=indent))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically; returns ``path``."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
