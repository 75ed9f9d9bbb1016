"""MeSH XML in NLM's exact structure, written from plain values: for tests and the parse benchmark.

The element names, nesting and attributes follow NLM's desc/qual files (DTD nlmdescriptorrecordset /
nlmqualifierrecordset): DateCreated/Year/Month/Day, AllowableQualifiersList/AllowableQualifier/
QualifierReferredTo/QualifierUI + QualifierName/String + Abbreviation, TreeNumberList, ConceptList/Concept
(PreferredConceptYN) with ConceptUI, ConceptName, ScopeNote, TermList/Term (ConceptPreferredTermYN,
IsPermutedTermYN, LexicalTag, RecordPreferredTermYN) with TermUI, String, DateCreated, ThesaurusIDlist; and the
nested look-alikes a careless parser trips on (PharmacologicalActionList/.../DescriptorName/String,
EntryCombinationList). :func:`synthetic_descriptor_file` writes a file of any size (the real 2025 file:
~30K records, ~300 MB) for the benchmark.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

DESC_HEADER = (
    '<?xml version="1.0"?>\n'
    '<!DOCTYPE DescriptorRecordSet SYSTEM "https://www.nlm.nih.gov/databases/dtd/nlmdescriptorrecordset_20250101.dtd">\n'
    '<DescriptorRecordSet LanguageCode = "eng">\n'
)
QUAL_HEADER = (
    '<?xml version="1.0"?>\n'
    '<!DOCTYPE QualifierRecordSet SYSTEM "https://www.nlm.nih.gov/databases/dtd/nlmqualifierrecordset_20250101.dtd">\n'
    '<QualifierRecordSet LanguageCode = "eng">\n'
)


@dataclass
class DescSpec:
    ui: str
    name: str
    tree_numbers: Sequence[str] = ()
    scope_note: str | None = None
    allowable: Sequence[tuple[str, str, str]] = ()  # (QualifierUI, name, abbreviation)
    # concepts: (ConceptUI, preferred, [terms]); the first term of the preferred concept is the record's name
    concepts: Sequence[tuple[str, bool, Sequence[str]]] = field(default_factory=list)
    pharmacological_actions: Sequence[tuple[str, str]] = ()  # (DescriptorUI, name): nested DescriptorName
    descriptor_class: str = "1"


@dataclass
class QualSpec:
    ui: str
    name: str
    abbreviation: str
    tree_numbers: Sequence[str] = ()
    scope_note: str | None = None


def _date(tag: str, indent: str) -> str:
    return f"{indent}<{tag}>\n{indent} <Year>1999</Year>\n{indent} <Month>01</Month>\n{indent} <Day>01</Day>\n{indent}</{tag}>\n"


def descriptor_record(d: DescSpec) -> str:
    """One DescriptorRecord element, indented as NLM indents it."""
    e = escape
    out = [f'<DescriptorRecord DescriptorClass = "{d.descriptor_class}">\n']
    out.append(
        f"  <DescriptorUI>{d.ui}</DescriptorUI>\n  <DescriptorName>\n   <String>{e(d.name)}</String>\n  </DescriptorName>\n"
    )
    out.append(_date("DateCreated", "  ") + _date("DateRevised", "  ") + _date("DateEstablished", "  "))
    if d.allowable:
        out.append("  <AllowableQualifiersList>\n")
        for ui, name, abbr in d.allowable:
            out.append(
                "   <AllowableQualifier>\n    <QualifierReferredTo>\n"
                f"     <QualifierUI>{ui}</QualifierUI>\n      <QualifierName>\n       <String>{e(name)}</String>\n"
                "      </QualifierName>\n    </QualifierReferredTo>\n"
                f"    <Abbreviation>{abbr}</Abbreviation>\n   </AllowableQualifier>\n"
            )
        out.append("  </AllowableQualifiersList>\n")
    out.append(f"  <HistoryNote>{e('91; was ' + d.name.upper() + ' 1975-90')}\n  </HistoryNote>\n")
    out.append("  <PublicMeSHNote>91; see under " + e(d.name.upper()) + " 1975-90\n  </PublicMeSHNote>\n")
    if d.allowable:
        q_ui, q_name, _ = d.allowable[0]
        out.append(
            "  <EntryCombinationList>\n   <EntryCombination>\n    <ECIN>\n     <DescriptorReferredTo>\n"
            f"      <DescriptorUI>D999999</DescriptorUI>\n      <DescriptorName>\n       <String>Not This Name</String>\n"
            "      </DescriptorName>\n     </DescriptorReferredTo>\n     <QualifierReferredTo>\n"
            f"      <QualifierUI>{q_ui}</QualifierUI>\n      <QualifierName>\n       <String>{e(q_name)}</String>\n"
            "      </QualifierName>\n     </QualifierReferredTo>\n    </ECIN>\n   </EntryCombination>\n"
            "  </EntryCombinationList>\n"
        )
    if d.pharmacological_actions:
        out.append("  <PharmacologicalActionList>\n")
        for ui, name in d.pharmacological_actions:
            out.append(
                "   <PharmacologicalAction>\n    <DescriptorReferredTo>\n"
                f"     <DescriptorUI>{ui}</DescriptorUI>\n     <DescriptorName>\n      <String>{e(name)}</String>\n"
                "     </DescriptorName>\n    </DescriptorReferredTo>\n   </PharmacologicalAction>\n"
            )
        out.append("  </PharmacologicalActionList>\n")
    if d.tree_numbers:
        out.append("  <TreeNumberList>\n")
        out.extend(f"   <TreeNumber>{t}</TreeNumber>\n" for t in d.tree_numbers)
        out.append("  </TreeNumberList>\n")
    concepts = d.concepts or [(f"M{d.ui[1:]}", True, [d.name])]
    out.append("  <ConceptList>\n")
    for c_ui, preferred, terms in concepts:
        out.append(f'   <Concept PreferredConceptYN="{"Y" if preferred else "N"}">\n')
        out.append(
            f"    <ConceptUI>{c_ui}</ConceptUI>\n    <ConceptName>\n     <String>{e(terms[0])}</String>\n    </ConceptName>\n"
        )
        if preferred and d.scope_note:
            out.append(f"    <ScopeNote>{e(d.scope_note)}\n    </ScopeNote>\n")
        out.append("    <TermList>\n")
        for j, term in enumerate(terms):
            rec_pref = "Y" if preferred and j == 0 else "N"
            out.append(
                f'     <Term  ConceptPreferredTermYN="{"Y" if j == 0 else "N"}"  IsPermutedTermYN="N"  '
                f'LexicalTag="NON"  RecordPreferredTermYN="{rec_pref}">\n'
                f"      <TermUI>T{abs(hash((c_ui, j))) % 10**6:06d}</TermUI>\n      <String>{e(term)}</String>\n"
                + _date("DateCreated", "      ")
                + "      <ThesaurusIDlist>\n       <ThesaurusID>NLM (1975)</ThesaurusID>\n"
                "       <ThesaurusID>UMLS (2004)</ThesaurusID>\n      </ThesaurusIDlist>\n     </Term>\n"
            )
        out.append("    </TermList>\n   </Concept>\n")
    out.append("  </ConceptList>\n </DescriptorRecord>\n")
    return " " + "".join(out)


def qualifier_record(q: QualSpec) -> str:
    e = escape
    trees = "".join(f"   <TreeNumber>{t}</TreeNumber>\n" for t in q.tree_numbers)
    note = f"    <ScopeNote>{e(q.scope_note)}\n    </ScopeNote>\n" if q.scope_note else ""
    return (
        f" <QualifierRecord>\n  <QualifierUI>{q.ui}</QualifierUI>\n  <QualifierName>\n   <String>{e(q.name)}</String>\n"
        "  </QualifierName>\n"
        + _date("DateCreated", "  ")
        + f"  <Annotation>subheading only; {e(q.name)}\n  </Annotation>\n"
        + (f"  <TreeNumberList>\n{trees}  </TreeNumberList>\n" if trees else "")
        + f'  <ConceptList>\n   <Concept PreferredConceptYN="Y">\n    <ConceptUI>M{q.ui[1:]}</ConceptUI>\n'
        f"    <ConceptName>\n     <String>{e(q.name)}</String>\n    </ConceptName>\n{note}"
        '    <TermList>\n     <Term  ConceptPreferredTermYN="Y"  IsPermutedTermYN="N"  LexicalTag="NON"  '
        'RecordPreferredTermYN="Y">\n'
        f"      <TermUI>T{q.ui[1:]}</TermUI>\n      <String>{e(q.name)}</String>\n"
        + _date("DateCreated", "      ")
        + f"      <Abbreviation>{q.abbreviation}</Abbreviation>\n      <SortVersion>{e(q.name.upper())}</SortVersion>\n"
        f"      <EntryVersion>{e(q.name.upper()[:10])}</EntryVersion>\n"
        "     </Term>\n    </TermList>\n   </Concept>\n  </ConceptList>\n </QualifierRecord>\n"
    )


def write_descriptor_file(path: str | Path, records: Iterable[DescSpec]) -> Path:
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(DESC_HEADER)
        for d in records:
            f.write(descriptor_record(d))
        f.write("</DescriptorRecordSet>\n")
    return path


def write_qualifier_file(path: str | Path, records: Iterable[QualSpec]) -> Path:
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(QUAL_HEADER)
        for q in records:
            f.write(qualifier_record(q))
        f.write("</QualifierRecordSet>\n")
    return path


# A few real qualifiers (id, name, abbreviation, tree number); enough for the synthetic descriptor files.
SAMPLE_QUALIFIERS: tuple[tuple[str, str, str, str], ...] = (
    ("Q000002", "abnormalities", "AB", "Y01.010"),
    ("Q000008", "administration & dosage", "AD", "Y07.010"),
    ("Q000009", "adverse effects", "AE", "Y07.040"),
    ("Q000097", "blood", "BL", "Y04.010.090"),
    ("Q000150", "complications", "CO", "Y05.010"),
    ("Q000175", "diagnosis", "DI", "Y04.010"),
    ("Q000188", "drug therapy", "DT", "Y07.020"),
    ("Q000209", "etiology", "ET", "Y05"),
    ("Q000235", "genetics", "GE", "Y03.010"),
    ("Q000378", "metabolism", "ME", "Y03.040"),
    ("Q000473", "pathology", "PA", "Y04.010.490"),
    ("Q000494", "pharmacology", "PD", "Y07.060"),
    ("Q000502", "physiology", "PH", "Y03.060"),
    ("Q000601", "surgery", "SU", "Y07.080"),
    ("Q000628", "therapy", "TH", "Y07"),
)


def synthetic_descriptors(n: int, *, seed: int = 0, qualifiers_per_record: int = 12) -> Iterable[DescSpec]:
    """``n`` descriptors shaped like NLM's (a few concepts and terms each, many allowable qualifiers)."""
    rng = random.Random(seed)
    letters = "ABCDEFGNZ"
    words = ["Acute", "Chronic", "Renal", "Hepatic", "Syndrome", "Disease", "Cell", "Receptor", "Protein", "Virus",
             "Nerve", "Artery", "Inhibitor", "Factor", "Type", "Neoplasms", "Infection", "Fever", "Drug", "Kinase"]  # fmt: skip
    quals = [(ui, name, abbr) for ui, name, abbr, _ in SAMPLE_QUALIFIERS]
    for i in range(n):
        name = " ".join(rng.sample(words, 2)) + f" {i}"
        allowable = [quals[(i + k) % len(quals)] for k in range(qualifiers_per_record)]
        concepts = [
            (
                f"M{i:07d}{c}",
                c == 0,
                [name if c == 0 and t == 0 else f"{name} term {c}.{t}" for t in range(4)],
            )
            for c in range(3)
        ]
        trees = [
            f"{rng.choice(letters)}{rng.randint(1, 20):02d}.{rng.randint(100, 999)}.{rng.randint(100, 999)}"
            for _ in range(2)
        ]
        yield DescSpec(
            ui=f"D{i:06d}",
            name=name,
            tree_numbers=trees,
            scope_note=f"A synthetic heading number {i}; " + " ".join(rng.choices(words, k=30)).lower() + ".",
            allowable=allowable,
            concepts=concepts,
            pharmacological_actions=[("D000900", "Anti-Bacterial Agents")] if i % 3 == 0 else [],
        )


def synthetic_qualifiers() -> list[QualSpec]:
    return [
        QualSpec(ui, name, abbr, [tree], f"Used for the {name} aspect of a subject.")
        for ui, name, abbr, tree in SAMPLE_QUALIFIERS
    ]
