"""Read a user's category map: `{span_categories: {Cat: rm_category, ...}, missing_kinds: [...]}`."""

from __future__ import annotations

from pathlib import Path

import yaml

from finegrain.config import ConfigError
from finegrain.data.categories import Taxonomy


def load_taxonomy(path: str | Path) -> Taxonomy:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"category file {path} does not exist")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    spans = raw.get("span_categories") if isinstance(raw, dict) else None
    if not isinstance(spans, dict) or not spans or not all(isinstance(k, str) and isinstance(v, str) for k, v in spans.items()):
        raise ConfigError(f"{path}: span_categories must map annotation categories to RM categories, got {spans!r}")
    kinds = raw.get("missing_kinds")
    if kinds is not None and (not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds)):
        raise ConfigError(f"{path}: missing_kinds must be a list of strings, got {kinds!r}")
    return Taxonomy.from_mapping(spans, tuple(kinds) if kinds else None)
