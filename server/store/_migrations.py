"""The store's schema versions: one folder of numbered SQL files per database, the same numbers in each."""
from __future__ import annotations

from importlib import resources


def migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration of a dialect ("sqlite", "postgresql"), in order."""
    folder = resources.files("plangate.server.store") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def number_of(name: str, dialect: str = "sqlite") -> int:
    """The number of the migration file NNNN_<name>.sql (the same in both folders)."""
    return next(number for number, file, _ in migrations(dialect) if file.split("_", 1)[1] == f"{name}.sql")


def statements(sql: str) -> list[str]:
    """A migration file's statements, split at the semicolons outside $$-quoted bodies (a function's body
    keeps its own). Our files keep semicolons out of comments and "--" out of strings."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    pieces = [""]
    for i, part in enumerate("\n".join(lines).split("$$")):
        if i % 2:                       # inside $$ ... $$: part of the statement being read
            pieces[-1] += f"$${part}$$"
        else:
            first, *rest = part.split(";")
            pieces[-1] += first
            pieces += rest
    return [piece.strip() for piece in pieces if piece.strip()]
