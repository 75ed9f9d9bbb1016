"""NLM's MeSH XML -> the Parquet tables `mesh_descriptors`, `mesh_entry_terms`, `mesh_qualifiers` in a folder.

    MESH_DIR/
      mesh_descriptors.parquet   one row per descriptor (tree numbers, categories with names, scope note)
      mesh_entry_terms.parquet   every term of every concept (the synonyms the offline classifier matches)
      mesh_qualifiers.parquet    the qualifiers with their two-digit codes and scope notes
      mesh.json                  where they came from: file names, sizes, sha256, year, counts

Rows are written in chunks as the parser streams, so memory stays bounded; every file is written under a
temporary name and renamed into place, and ``mesh.json`` last, so a folder with ``mesh.json`` is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from curation.mesh.xml import MeshXMLError, iter_descriptors, iter_qualifiers
from curation.rules.mesh_cues import qualifier_codes

CHUNK = 5000
MANIFEST = "mesh.json"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _ChunkWriter:
    """Appends rows to one Parquet file (temporary name) in chunks; :meth:`close` renames it into place."""

    def __init__(self, path: Path, table: str) -> None:
        self.path, self.table = path, table
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.schema = schemas.get(table).schema
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self.rows: dict[str, list[Any]] = {f.name: [] for f in self.schema}
        self.count = 0

    def add(self, **row: Any) -> None:
        for k, v in row.items():
            self.rows[k].append(v)
        if len(self.rows[self.schema.names[0]]) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        n = len(self.rows[self.schema.names[0]])
        if n:
            batch = pa.Table.from_pydict(self.rows, schema=self.schema)
            self.writer.write_table(schemas.conform(batch, self.table))
            self.count += n
            self.rows = {f.name: [] for f in self.schema}

    def close(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def year_of(path: str) -> int | None:
    """The MeSH year in an NLM file name (desc2025.xml -> 2025)."""
    match = re.search(r"(?:desc|qual)(\d{4})", os.path.basename(path))
    return int(match.group(1)) if match else None


def parse_mesh(
    descriptors_xml: str | os.PathLike[str],
    qualifiers_xml: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Parse both files into ``out_dir`` (created if needed); returns the manifest written to mesh.json."""
    desc_path, qual_path = os.fspath(descriptors_xml), os.fspath(qualifiers_xml)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the new mesh.json is written
    started = time.perf_counter()

    qualifiers = list(iter_qualifiers(qual_path))
    if not qualifiers:
        raise MeshXMLError(f"{qual_path}: no QualifierRecord found")
    codes = qualifier_codes(q.name for q in qualifiers)
    if len(codes) != len(qualifiers):
        raise MeshXMLError(f"{qual_path}: qualifier names are not unique")
    qual_rows = sorted(qualifiers, key=lambda q: codes[q.name])
    qual_table = pa.Table.from_pylist(
        [
            {
                "code": codes[q.name],
                "qualifier_ui": q.ui,
                "name": q.name,
                "abbreviation": q.abbreviation,
                "tree_numbers": q.tree_numbers,
                "scope_note": q.scope_note,
            }
            for q in qual_rows
        ],
        schema=schemas.get("mesh_qualifiers").schema,
    )
    known_qualifiers = {q.ui for q in qualifiers}

    descriptors = _ChunkWriter(out / "mesh_descriptors.parquet", "mesh_descriptors")
    terms = _ChunkWriter(out / "mesh_entry_terms.parquet", "mesh_entry_terms")
    unknown_refs = 0
    try:
        for n, d in enumerate(iter_descriptors(desc_path), 1):
            unknown_refs += sum(1 for q in d.allowable_qualifiers if q not in known_qualifiers)
            descriptors.add(
                descriptor_ui=d.ui,
                name=d.name,
                tree_numbers=d.tree_numbers,
                categories=d.categories,
                category_names=d.category_names,
                scope_note=d.scope_note,
                allowable_qualifiers=d.allowable_qualifiers,
                descriptor_class=d.descriptor_class,
            )
            for concept_ui, term, preferred_concept, record_preferred in d.terms:
                terms.add(
                    descriptor_ui=d.ui,
                    concept_ui=concept_ui,
                    term=term,
                    preferred_concept=preferred_concept,
                    record_preferred=record_preferred,
                )
            if progress is not None and n % 10_000 == 0:
                progress(n)
        descriptors.close()
        terms.close()
    except BaseException:
        descriptors.abort()
        terms.abort()
        raise
    if descriptors.count == 0:
        raise MeshXMLError(f"{desc_path}: no DescriptorRecord found")
    tmp = out / f".mesh_qualifiers.parquet.{uuid.uuid4().hex[:8]}.tmp"
    pq.write_table(qual_table, tmp, compression="zstd")
    os.replace(tmp, out / "mesh_qualifiers.parquet")

    manifest = {
        "year": year_of(desc_path) or year_of(qual_path),
        "files": {
            os.path.basename(p): {"bytes": os.path.getsize(p), "sha256": _sha256(p)}
            for p in (desc_path, qual_path)
        },
        "counts": {
            "mesh_descriptors": descriptors.count,
            "mesh_entry_terms": terms.count,
            "mesh_qualifiers": qual_table.num_rows,
        },
        "unknown_qualifier_references": unknown_refs,
        "parse_s": round(time.perf_counter() - started, 3),
    }
    tmp_manifest = out / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp_manifest, out / MANIFEST)
    return manifest
