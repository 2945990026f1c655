"""Text files: atomic writes (a reader sees the old file or the new one, never half of
one), and a file's lines as the data readers split them."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rome_jax.errors import DataError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`.

    The file gets the permissions of a plain `open(path, "w")` (0666 less the umask),
    not mkstemp's owner-only 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, default=float))


def read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file, without their line ends ("\\n" or "\\r\\n").

    Only "\\n" ends a line (texts may hold other line breaks); a byte-order mark at the
    start is dropped; a last empty line is not a line. A file that is not UTF-8 is a
    DataError naming the file and the line.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 ({e.reason})") from None
    text = text.removeprefix("\ufeff")  # MRPC train/dev headers start with a BOM
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
