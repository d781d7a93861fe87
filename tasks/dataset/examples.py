"""Curated example sources: JSONL, CSV, Parquet or JSON, local or ``s3://``, read through a column mapping.

A mapping names which source column is the prompt, the response, the source group (intent, document,
question cluster: the unit the split keeps together), the label whose distribution the gate watches,
the row id and an optional context (a passage or a list of passages given with the question).
Cells are kept as found, except that blank strings become ``None``: the gate, not the loader, decides
what a missing value means, so a defective row is reported and quarantined rather than silently dropped.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.settings import Settings

FIELDS = ("prompt", "response", "group", "label", "id", "context")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}
KEY_COLUMN = "key"  # the record key when a JSON file is an object of records (PubMedQA: the PMID)


class ExamplesError(ValueError):
    """The examples cannot be read as declared; the message names the file, line or column."""


@dataclass(frozen=True)
class ColumnMapping:
    prompt: str
    response: str
    group: str | None = None
    label: str | None = None
    id: str | None = None
    context: str | None = None
    optional: frozenset[str] = field(default=frozenset(), compare=False)  # may be absent from the source

    @classmethod
    def parse(cls, spec: str) -> ColumnMapping:
        """A preset name (``default``, ``bitext``, ``pubmedqa``) or ``field=column,...`` pairs."""
        spec = spec.strip() or "default"
        if spec in PRESETS:
            return PRESETS[spec]
        pairs = [p.partition("=") for p in spec.split(",") if p.strip()]
        bad = [f"{k.strip()!r}" for k, eq, v in pairs if not eq or not v.strip() or k.strip() not in FIELDS]
        if bad or not pairs:
            raise ExamplesError(f"bad mapping {spec!r} ({', '.join(bad) or 'empty'}): use a preset "
                                f"({', '.join(PRESETS)}) or field=column pairs with fields {', '.join(FIELDS)}")
        values = {k.strip(): v.strip() for k, _, v in pairs}
        missing = [f for f in ("prompt", "response") if f not in values]
        if missing:
            raise ExamplesError(f"mapping {spec!r} does not name a column for {', '.join(missing)}")
        return cls.of(values)

    @classmethod
    def of(cls, v: Mapping[str, str | None]) -> ColumnMapping:
        return cls(v["prompt"] or "", v["response"] or "", v.get("group"), v.get("label"), v.get("id"),
                   v.get("context"))

    def as_dict(self) -> dict[str, str | None]:
        return {k: v for k, v in asdict(self).items() if k != "optional"}

    def resolve(self, columns: list[str], where: str) -> ColumnMapping:
        """This mapping with optional columns the source lacks dropped; a declared column missing is an error."""
        absent = {f: c for f, c in self.as_dict().items() if c is not None and c not in columns}
        required = [f"{f}={c}" for f, c in absent.items() if f not in self.optional]
        if required:
            raise ExamplesError(f"{where} has no column {', '.join(required)}; its columns are {columns}")
        kept = {f: None if f in absent else c for f, c in self.as_dict().items()}
        return ColumnMapping.of(kept)


PRESETS = {
    "default": ColumnMapping("question", "answer", "group", "label", "id", "context",
                             optional=frozenset({"group", "label", "id", "context"})),
    "bitext": ColumnMapping("instruction", "response", group="intent", label="intent"),
    "pubmedqa": ColumnMapping("QUESTION", "LONG_ANSWER", label="final_decision", id=KEY_COLUMN, context="CONTEXTS"),
}


@dataclass(frozen=True)
class CuratedExample:
    id: str
    prompt: str | None
    response: str | None
    group: str | None
    label: str | None
    context: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceInfo:
    uri: str
    format: str
    sha256: str
    bytes: int
    rows: int


def load_examples(settings: Settings, uri: str, mapping: ColumnMapping) -> tuple[list[CuratedExample], SourceInfo]:
    """Read and map every row of ``uri``; the fingerprint is the sha256 of the bytes read."""
    fmt = source_format(uri)
    data = read_source(settings, uri)
    records = parse_records(data, fmt, uri)
    if not records:
        raise ExamplesError(f"{uri} holds no examples")
    columns = list(dict.fromkeys(c for r in records for c in r))
    resolved = mapping.resolve(columns, uri)
    examples = [map_record(r, resolved) for r in records]
    return examples, SourceInfo(uri, fmt, hashlib.sha256(data).hexdigest(), len(data), len(examples))


def source_format(uri: str) -> str:
    suffix = Path(uri.split("?")[0]).suffix.lower()
    if suffix not in FORMATS:
        raise ExamplesError(f"cannot tell the format of {uri!r}: use one of {', '.join(sorted(FORMATS))}")
    return FORMATS[suffix]


def read_source(settings: Settings, uri: str) -> bytes:
    if uri.startswith("s3://"):
        from tasks.stores.s3 import S3Location, S3Store

        location = S3Location.parse(uri)
        return S3Store(settings, bucket=location.bucket, prefix="").get_bytes(location.prefix)
    path = Path(uri).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"examples file not found: {path}")
    return path.read_bytes()


def parse_records(data: bytes, fmt: str, uri: str) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        if fmt == "jsonl":
            return _jsonl_records(data, uri)
        if fmt == "json":
            return _json_records(json.loads(data), uri)
        if fmt == "csv":  # every cell as text: "NA" is an answer, not a missing value
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        else:
            frame = pd.read_parquet(io.BytesIO(data))
    except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError) as exc:
        raise ExamplesError(f"{uri} is not valid {fmt}: {exc}") from None
    return frame.to_dict(orient="records")


def _jsonl_records(data: bytes, uri: str) -> list[dict[str, Any]]:
    records = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ExamplesError(f"{uri} line {n} is not JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise ExamplesError(f"{uri} line {n} is not a JSON object")
        records.append(record)
    return records


def _json_records(value: Any, uri: str) -> list[dict[str, Any]]:
    """A list of records, or an object of records keyed by id (the key becomes column ``key``)."""
    if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
        return [{KEY_COLUMN: k, **v} for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    raise ExamplesError(f"{uri} is neither a list of records nor an object of records")


def map_record(record: dict[str, Any], mapping: ColumnMapping) -> CuratedExample:
    def cell(column: str | None) -> str | None:
        return None if column is None else as_text(record.get(column))

    prompt, response = cell(mapping.prompt), cell(mapping.response)
    row_id = cell(mapping.id) or content_id(prompt, response, cell(mapping.group))
    group = cell(mapping.group) if mapping.group else row_id  # no group column: every row is its own source
    label = cell(mapping.label) if mapping.label else group
    context = as_passages(record.get(mapping.context)) if mapping.context else ()
    return CuratedExample(row_id, prompt, response, group, label, context)


def as_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = value.strip() if isinstance(value, str) else str(value)
    return text or None


def as_passages(value: Any) -> tuple[str, ...]:
    if hasattr(value, "tolist"):  # a numpy array from Parquet
        value = value.tolist()
    items = value if isinstance(value, list | tuple) else [value]
    return tuple(t for t in (as_text(v) for v in items) if t)


def content_id(*parts: str | None) -> str:
    """A row id from its content: reordering the source file changes no id."""
    joined = "\x1f".join(p or "" for p in parts)
    return hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()[:16]
