"""The key tables of docs/configs.md, written from the config's schema.

    python -m rome_jax.config.markdown                           # print the tables
    python -m rome_jax.config.markdown --update docs/configs.md  # rewrite them there

docs/configs.md holds the tables between `BEGIN` and `END`; tests/test_config_schema.py
checks that they are what `tables()` writes, so a key declared in
`rome_jax.config.schema` is documented by running the second command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rome_jax.config.checks import shown
from rome_jax.config.schema import NEW, SECTIONS, FromEnv, Key, Section

BEGIN = "<!-- the key tables: from rome_jax/config/schema.py by python -m rome_jax.config.markdown --update -->"
END = "<!-- end of keys -->"


def default_shown(value: Any) -> str:
    """A key's default as the docs write it (an environment default by its variable)."""
    if isinstance(value, FromEnv):
        return f"`${value.variable}`, else {shown(value.fallback)}"
    return shown(value)


def meaning(key: Key) -> str:
    """The key's documentation, with what its flags mean for a stored workdir."""
    text = key.doc
    if key.run_only:
        text += ". Run-only (a workdir resumes with another value)"
    if key.before is not NEW:
        before = shown(key.before)
        text += f". Added later: older workdirs read as {before}"
        if key.before != key.default_value():
            text += f" (resume one with `--config.{key.name}={before.strip('`')}`)"
    return text


def tables(sections: Sequence[Section] = SECTIONS) -> str:
    """One markdown table per section: key, default, allowed values, meaning."""
    parts = []
    for section in sections:
        lines = [f"{'#' * section.level} {section.title}", ""]
        if section.intro:
            lines += [section.intro, ""]
        lines += ["| key | default | allowed | meaning |", "|---|---|---|---|"]
        for key in section.keys:
            allowed = key.allowed if key.allowed is not None else key.check.allowed
            lines.append(f"| `{key.name}` | {default_shown(key.default)} | {allowed} | {meaning(key)} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def with_tables(text: str, where: str = "docs/configs.md") -> str:
    """`text` (a markdown page) with its `BEGIN` ... `END` block holding `tables()`."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{where}: no {BEGIN} ... {END} block for the key tables")
    return f"{head}{BEGIN}\n\n{tables()}\n{END}{tail}"


def update(path: str | os.PathLike) -> bool:
    """Rewrites the key tables of the page at `path`; True if they changed."""
    text = Path(path).read_text(encoding="utf-8")
    new = with_tables(text, str(path))
    if new != text:
        Path(path).write_text(new, encoding="utf-8")
    return new != text


def main(argv: Sequence[str]) -> int:
    if not argv:
        sys.stdout.write(tables())
        return 0
    if len(argv) == 2 and argv[0] == "--update":
        print(f"{argv[1]}: {'updated' if update(argv[1]) else 'up to date'}")
        return 0
    print("usage: python -m rome_jax.config.markdown [--update docs/configs.md]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
