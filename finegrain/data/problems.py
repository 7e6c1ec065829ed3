"""Data problems that name the file, record, line, field and value, collected rather than raised one by one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MAX_VALUE_CHARS = 80


@dataclass(frozen=True)
class Problem:
    file: str
    record: int | None  # 0-based index of the record in the file
    field: str  # dotted path inside the record, e.g. "responses[0].annotation.spans[2].end"
    value: Any
    message: str
    line: int | None = None  # 1-based line, for JSONL

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.record is not None:
            where += f" record {self.record}"
        if self.field:
            where += f" field {self.field}"
        value = repr(self.value)
        if len(value) > _MAX_VALUE_CHARS:
            value = value[: _MAX_VALUE_CHARS - 3] + "..."
        return f"{where}: {self.message} (value: {value})"


class DataError(ValueError):
    """Raised by loaders when a file has problems; `.problems` lists every one."""

    def __init__(self, problems: list[Problem], shown: int = 20):
        self.problems = problems
        lines = [str(p) for p in problems[:shown]]
        if len(problems) > shown:
            lines.append(f"... and {len(problems) - shown} more (run `finegrain data check` for all)")
        super().__init__(f"{len(problems)} problem(s) in the data:\n" + "\n".join(lines))


class Collector:
    """Gathers problems for one file while a reader walks it."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []
        self.record: int | None = None
        self.line: int | None = None

    def add(self, field: str, value: Any, message: str) -> None:
        self.problems.append(Problem(self.file, self.record, field, value, message, self.line))

    def expect_type(self, obj: dict, key: str, types: type | tuple[type, ...], where: str, *, required: bool = True) -> Any:
        """obj[key] when present and of `types`; otherwise record a problem and return None."""
        field = f"{where}.{key}" if where else key
        if key not in obj:
            if required:
                self.add(field, None, "missing field")
            return None
        value = obj[key]
        bad_bool = isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))
        if not isinstance(value, types) or bad_bool:
            names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            self.add(field, value, f"expected {names}, got {type(value).__name__}")
            return None
        return value


def jsonl_records(path: Path, c: Collector) -> Iterator[Any]:
    """Decoded records of a JSONL file, blank lines skipped; sets `c.record` and `c.line` for each
    and reports a malformed line to `c` instead of yielding it."""
    record = -1
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record += 1
            c.record, c.line = record, lineno
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                c.add("", line.strip()[:80], f"malformed JSON line: {err.msg} (column {err.colno})")
