"""Streaming parser for NLM's MeSH XML (descYYYY.xml, qualYYYY.xml), in bounded memory.

``lxml.etree.iterparse`` yields each ``DescriptorRecord`` / ``QualifierRecord`` when its end tag is read; the
record is turned into plain values, then cleared and unlinked from the root, so memory stays flat however big
the file is (the 2025 descriptor file: ~30K records, ~300 MB). Only direct children of a record are read
(``DescriptorName/String``, not the ``DescriptorName`` nested in PharmacologicalActionList or
EntryCombinationList). Files may be gzip-compressed (``.gz``).

Malformed XML, a wrong root element, or a record without its id or name is a :class:`MeshXMLError` naming the
file and line.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from lxml import etree

from curation.errors import UserError
from curation.rules.mesh_cues import CATEGORY_NAMES, categories_of

_SPACES = re.compile(r"\s+")


class MeshXMLError(UserError, ValueError):
    """A MeSH XML file cannot be parsed; the message names the file and line."""


@dataclass
class Descriptor:
    ui: str
    name: str
    tree_numbers: list[str]
    scope_note: str | None
    allowable_qualifiers: list[str]
    descriptor_class: str | None
    # (concept_ui, term, preferred_concept, record_preferred), every term of every concept
    terms: list[tuple[str | None, str, bool, bool]] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return categories_of(self.tree_numbers)

    @property
    def category_names(self) -> list[str]:
        return [CATEGORY_NAMES[c] for c in self.categories]


@dataclass
class Qualifier:
    ui: str
    name: str
    abbreviation: str | None
    tree_numbers: list[str]
    scope_note: str | None


def _text(elem: Any, path: str) -> str | None:
    found = elem.find(path)
    if found is None or found.text is None:
        return None
    text = found.text
    if "\n" in text or "  " in text or "\t" in text:  # NLM wraps scope notes over lines
        text = _SPACES.sub(" ", text)
    return text.strip() or None


def _texts(elem: Any, path: str) -> list[str]:
    return [t.text.strip() for t in elem.iterfind(path) if t.text and t.text.strip()]


def _preferred_concept(record: Any) -> Any:
    concepts = record.findall("ConceptList/Concept")
    for concept in concepts:
        if concept.get("PreferredConceptYN") == "Y":
            return concept
    return concepts[0] if concepts else None


def _scope_note(record: Any) -> str | None:
    # Current files keep the scope note on the preferred concept; older ones on the record itself.
    concept = _preferred_concept(record)
    note = _text(concept, "ScopeNote") if concept is not None else None
    return note or _text(record, "ScopeNote")


def _open(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 - closed by the caller's context manager


def _records(path: str, root_tag: str, record_tag: str) -> Iterator[Any]:
    """Each ``record_tag`` element of ``path`` once it is complete; cleared after the caller is done with it."""
    if not os.path.exists(path):
        raise MeshXMLError(f"{path}: no such file")
    with _open(path) as f:
        # No DTD loading and no network: NLM's DOCTYPE names a remote DTD that we neither need nor fetch.
        events = etree.iterparse(
            f,
            events=("start", "end"),
            tag=(root_tag, record_tag, "DescriptorRecordSet", "QualifierRecordSet"),
            load_dtd=False,
            no_network=True,
            resolve_entities=False,
            huge_tree=True,
        )
        seen_root = False
        try:
            for event, elem in events:
                if not seen_root:
                    if elem.tag != root_tag:
                        raise MeshXMLError(
                            f"{path}:{elem.sourceline}: root element is <{elem.tag}>, expected <{root_tag}> "
                            f"({'a qualifier file' if 'Qualifier' in elem.tag else 'a descriptor file'} "
                            "given where the other kind was expected?)"
                        )
                    seen_root = True
                    continue
                if event != "end" or elem.tag != record_tag:
                    continue
                yield elem
                # Free the record and everything before it: memory stays bounded by one record.
                elem.clear(keep_tail=False)
                parent = elem.getparent()
                if parent is not None:
                    while elem.getprevious() is not None:
                        del parent[0]
        except etree.XMLSyntaxError as exc:
            line = exc.lineno if exc.lineno else "?"
            raise MeshXMLError(f"{path}:{line}: malformed XML: {exc.msg}") from None
        if not seen_root:
            raise MeshXMLError(f"{path}:1: no <{root_tag}> element: not a MeSH {root_tag} file")


def iter_descriptors(path: str | os.PathLike[str]) -> Iterator[Descriptor]:
    """Every DescriptorRecord of a descYYYY.xml (or .gz) file, streamed."""
    path = os.fspath(path)
    for rec in _records(path, "DescriptorRecordSet", "DescriptorRecord"):
        ui = _text(rec, "DescriptorUI")
        name = _text(rec, "DescriptorName/String")
        if not ui or not name:
            missing = "DescriptorUI" if not ui else "DescriptorName/String"
            raise MeshXMLError(
                f"{path}:{rec.sourceline}: DescriptorRecord {ui or ''} has no {missing}".strip()
            )
        terms: list[tuple[str | None, str, bool, bool]] = []
        for concept in rec.iterfind("ConceptList/Concept"):
            concept_ui = _text(concept, "ConceptUI")
            preferred = concept.get("PreferredConceptYN") == "Y"
            for term in concept.iterfind("TermList/Term"):
                string = _text(term, "String")
                if string:
                    terms.append((concept_ui, string, preferred, term.get("RecordPreferredTermYN") == "Y"))
        yield Descriptor(
            ui=ui,
            name=name,
            tree_numbers=_texts(rec, "TreeNumberList/TreeNumber"),
            scope_note=_scope_note(rec),
            allowable_qualifiers=_texts(
                rec, "AllowableQualifiersList/AllowableQualifier/QualifierReferredTo/QualifierUI"
            ),
            descriptor_class=rec.get("DescriptorClass"),
            terms=terms,
        )


def iter_qualifiers(path: str | os.PathLike[str]) -> Iterator[Qualifier]:
    """Every QualifierRecord of a qualYYYY.xml (or .gz) file, streamed."""
    path = os.fspath(path)
    for rec in _records(path, "QualifierRecordSet", "QualifierRecord"):
        ui = _text(rec, "QualifierUI")
        name = _text(rec, "QualifierName/String")
        if not ui or not name:
            missing = "QualifierUI" if not ui else "QualifierName/String"
            raise MeshXMLError(
                f"{path}:{rec.sourceline}: QualifierRecord {ui or ''} has no {missing}".strip()
            )
        concept = _preferred_concept(rec)
        abbreviation = None
        if concept is not None:
            for term in concept.iterfind("TermList/Term"):
                if term.get("RecordPreferredTermYN") == "Y" or abbreviation is None:
                    abbreviation = _text(term, "Abbreviation") or abbreviation
        yield Qualifier(
            ui=ui,
            name=name,
            abbreviation=abbreviation,
            tree_numbers=_texts(rec, "TreeNumberList/TreeNumber"),
            scope_note=_scope_note(rec),
        )
