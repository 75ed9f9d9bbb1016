"""NLM MeSH XML: streaming parser, malformed files, Parquet tables, `m1 mesh fetch/parse/show/classify`."""

from __future__ import annotations

import gzip
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import schemas
from curation.cli import main
from curation.mesh.fetch import MeshFetchError, candidate_urls, fetch_mesh
from curation.mesh.synth_xml import (
    DescSpec,
    synthetic_descriptors,
    synthetic_qualifiers,
    write_descriptor_file,
    write_qualifier_file,
)
from curation.mesh.tables import parse_mesh
from curation.mesh.vocab import VocabularyError, load_nlm
from curation.mesh.xml import MeshXMLError, iter_descriptors, iter_qualifiers

# One record exactly as NLM writes it (desc2025.xml), trimmed of repeated siblings.
REAL_RECORD = """<?xml version="1.0"?>
<!DOCTYPE DescriptorRecordSet SYSTEM "https://www.nlm.nih.gov/databases/dtd/nlmdescriptorrecordset_20250101.dtd">
<DescriptorRecordSet LanguageCode = "eng">
<DescriptorRecord DescriptorClass = "1">
  <DescriptorUI>D000001</DescriptorUI>
  <DescriptorName>
   <String>Calcimycin</String>
  </DescriptorName>
  <DateCreated>
   <Year>1974</Year>
   <Month>11</Month>
   <Day>19</Day>
  </DateCreated>
  <AllowableQualifiersList>
   <AllowableQualifier>
    <QualifierReferredTo>
     <QualifierUI>Q000008</QualifierUI>
      <QualifierName>
       <String>administration &amp; dosage</String>
      </QualifierName>
    </QualifierReferredTo>
    <Abbreviation>AD</Abbreviation>
   </AllowableQualifier>
   <AllowableQualifier>
    <QualifierReferredTo>
     <QualifierUI>Q000494</QualifierUI>
      <QualifierName>
       <String>pharmacology</String>
      </QualifierName>
    </QualifierReferredTo>
    <Abbreviation>PD</Abbreviation>
   </AllowableQualifier>
  </AllowableQualifiersList>
  <HistoryNote>91(75); was A 23187 1975-90 (see under ANTIBIOTICS 1975-83)
  </HistoryNote>
  <PharmacologicalActionList>
   <PharmacologicalAction>
    <DescriptorReferredTo>
     <DescriptorUI>D000900</DescriptorUI>
     <DescriptorName>
      <String>Anti-Bacterial Agents</String>
     </DescriptorName>
    </DescriptorReferredTo>
   </PharmacologicalAction>
  </PharmacologicalActionList>
  <TreeNumberList>
   <TreeNumber>D03.633.100.221.173</TreeNumber>
  </TreeNumberList>
  <ConceptList>
   <Concept PreferredConceptYN="Y">
    <ConceptUI>M0000001</ConceptUI>
    <ConceptName>
     <String>Calcimycin</String>
    </ConceptName>
    <CASN1Name>4-Benzoxazolecarboxylic acid, 5-(methylamino)-2-...</CASN1Name>
    <RegistryNumber>37H9VM9WZL</RegistryNumber>
    <ScopeNote>An ionophorous, polyether antibiotic from Streptomyces chartreusensis. It binds and transports
    CALCIUM and other divalent cations across membranes.
    </ScopeNote>
    <TermList>
     <Term  ConceptPreferredTermYN="Y"  IsPermutedTermYN="N"  LexicalTag="NON"  RecordPreferredTermYN="Y">
      <TermUI>T000002</TermUI>
      <String>Calcimycin</String>
      <DateCreated>
       <Year>1999</Year>
       <Month>01</Month>
       <Day>01</Day>
      </DateCreated>
      <ThesaurusIDlist>
       <ThesaurusID>NLM (1975)</ThesaurusID>
      </ThesaurusIDlist>
     </Term>
     <Term  ConceptPreferredTermYN="N"  IsPermutedTermYN="N"  LexicalTag="NON"  RecordPreferredTermYN="N">
      <TermUI>T000001</TermUI>
      <String>A-23187</String>
     </Term>
    </TermList>
   </Concept>
   <Concept PreferredConceptYN="N">
    <ConceptUI>M0353609</ConceptUI>
    <ConceptName>
     <String>A-23187</String>
    </ConceptName>
    <TermList>
     <Term  ConceptPreferredTermYN="Y"  IsPermutedTermYN="N"  LexicalTag="LAB"  RecordPreferredTermYN="N">
      <TermUI>T000001</TermUI>
      <String>Antibiotic A23187</String>
     </Term>
    </TermList>
   </Concept>
  </ConceptList>
 </DescriptorRecord>
</DescriptorRecordSet>
"""

REAL_QUALIFIER = """<?xml version="1.0"?>
<!DOCTYPE QualifierRecordSet SYSTEM "https://www.nlm.nih.gov/databases/dtd/nlmqualifierrecordset_20250101.dtd">
<QualifierRecordSet LanguageCode = "eng">
<QualifierRecord>
  <QualifierUI>Q000000981</QualifierUI>
  <QualifierName>
   <String>diagnostic imaging</String>
  </QualifierName>
  <DateCreated>
   <Year>2016</Year>
   <Month>06</Month>
   <Day>29</Day>
  </DateCreated>
  <Annotation>subheading only; coordinate with specific imaging technique if pertinent
  </Annotation>
  <TreeNumberList>
   <TreeNumber>Y04.010.131</TreeNumber>
  </TreeNumberList>
  <ConceptList>
   <Concept PreferredConceptYN="Y">
    <ConceptUI>M000615138</ConceptUI>
    <ConceptName>
     <String>diagnostic imaging</String>
    </ConceptName>
    <ScopeNote>Used for the visualization of an anatomical structure or for the diagnosis of disease.
    </ScopeNote>
    <TermList>
     <Term  ConceptPreferredTermYN="Y"  IsPermutedTermYN="N"  LexicalTag="NON"  RecordPreferredTermYN="Y">
      <TermUI>T000962084</TermUI>
      <String>diagnostic imaging</String>
      <Abbreviation>DG</Abbreviation>
      <SortVersion>DIAGNOSTIC IMAGING</SortVersion>
      <EntryVersion>DIAG IMAGE</EntryVersion>
     </Term>
    </TermList>
   </Concept>
  </ConceptList>
 </QualifierRecord>
</QualifierRecordSet>
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_descriptor_record_exactly_as_nlm_writes_it(tmp_path):
    [d] = list(iter_descriptors(write(tmp_path / "desc2025.xml", REAL_RECORD)))
    assert d.ui == "D000001"
    assert d.name == "Calcimycin"  # not the nested PharmacologicalAction name
    assert d.tree_numbers == ["D03.633.100.221.173"]
    assert d.categories == ["D"] and d.category_names == ["Chemicals and Drugs"]
    assert d.scope_note == (
        "An ionophorous, polyether antibiotic from Streptomyces chartreusensis. It binds and transports "
        "CALCIUM and other divalent cations across membranes."
    )
    assert d.allowable_qualifiers == ["Q000008", "Q000494"]
    assert d.descriptor_class == "1"
    assert d.terms == [
        ("M0000001", "Calcimycin", True, True),
        ("M0000001", "A-23187", True, False),
        ("M0353609", "Antibiotic A23187", False, False),
    ]


def test_qualifier_record_exactly_as_nlm_writes_it(tmp_path):
    [q] = list(iter_qualifiers(write(tmp_path / "qual2025.xml", REAL_QUALIFIER)))
    assert (q.ui, q.name, q.abbreviation, q.tree_numbers) == (
        "Q000000981",
        "diagnostic imaging",
        "DG",
        ["Y04.010.131"],
    )
    assert (
        q.scope_note
        == "Used for the visualization of an anatomical structure or for the diagnosis of disease."
    )


def test_gzip_files_parse_the_same(tmp_path):
    gz = tmp_path / "desc2025.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(REAL_RECORD)
    assert [d.ui for d in iter_descriptors(gz)] == ["D000001"]


@pytest.mark.parametrize(
    ("mutate", "line", "message"),
    [
        (lambda s: s.replace("</DescriptorName>\n  <DateCreated>", "</DescriptorNam>\n  <DateCreated>"), 8, "malformed XML"),
        (lambda s: s.replace("administration &amp; dosage", "administration & dosage"), 19, "malformed XML"),
        (lambda s: s[: s.index("  <TreeNumberList>")], None, "malformed XML"),  # truncated download
        (lambda s: s.replace("<DescriptorUI>D000001</DescriptorUI>\n", ""), 4, "has no DescriptorUI"),
        (lambda s: s.replace("<String>Calcimycin</String>\n  </DescriptorName>", "<String> </String>\n  </DescriptorName>"), 4, "has no DescriptorName/String"),
    ],
)  # fmt: skip
def test_malformed_descriptor_files_name_file_and_line(tmp_path, mutate, line, message):
    path = write(tmp_path / "desc2025.xml", mutate(REAL_RECORD))
    with pytest.raises(MeshXMLError) as err:
        list(iter_descriptors(path))
    text = str(err.value)
    assert text.startswith(f"{path}:")
    assert message in text
    if line is not None:
        assert text.startswith(f"{path}:{line}:"), text


def test_wrong_kind_of_file_and_missing_file(tmp_path):
    qual = write(tmp_path / "qual2025.xml", REAL_QUALIFIER)
    with pytest.raises(
        MeshXMLError,
        match=r"qual2025.xml:3: root element is <QualifierRecordSet>, expected <DescriptorRecordSet>",
    ):
        list(iter_descriptors(qual))
    other = write(tmp_path / "other.xml", "<?xml version='1.0'?>\n<html><body/></html>\n")
    with pytest.raises(MeshXMLError, match="not a MeSH DescriptorRecordSet file"):
        list(iter_descriptors(other))
    with pytest.raises(MeshXMLError, match="no such file"):
        list(iter_qualifiers(tmp_path / "nope.xml"))


def test_the_cli_prints_a_clean_error_for_a_malformed_file(tmp_path, capsys):
    desc = write(
        tmp_path / "desc2025.xml",
        REAL_RECORD.replace("</DescriptorName>\n  <DateCreated>", "</Nope>\n  <DateCreated>"),
    )
    qual = write(tmp_path / "qual2025.xml", REAL_QUALIFIER)
    rc = main(["mesh", "parse", str(desc), str(qual), "--dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"{desc}:8: malformed XML: Opening and ending tag mismatch" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "mesh.json").exists()


def test_memory_is_freed_as_records_stream(tmp_path):
    from curation.mesh.xml import _records

    path = write_descriptor_file(tmp_path / "desc2025.xml", synthetic_descriptors(300))
    assert sum(1 for _ in iter_descriptors(path)) == 300
    # mid-stream, the root holds only the current record and the few lxml has parsed ahead, never all 300
    sizes = [len(rec.getparent()) for rec in _records(str(path), "DescriptorRecordSet", "DescriptorRecord")]
    assert len(sizes) == 300
    assert max(sizes) <= 10


def test_parse_mesh_writes_the_three_tables_atomically(tmp_path):
    desc = write_descriptor_file(
        tmp_path / "desc2025.xml",
        [
            DescSpec("D003920", "Diabetes Mellitus", ["C18.452.394.750", "C19.246"], "A heterogeneous group...",
                     [("Q000175", "diagnosis", "DI"), ("Q000188", "drug therapy", "DT")],
                     [("M0006124", True, ["Diabetes Mellitus"])]),
            DescSpec("D000740", "Anemia, Sickle Cell", ["C15.378.071.141.150.150", "C16.320.365"], None,
                     [("Q000175", "diagnosis", "DI")],
                     [("M0001178", True, ["Anemia, Sickle Cell", "Sickle Cell Anemia", "HbS Disease"])]),
            DescSpec("D008687", "Metformin", ["D02.078.370.141.450"], "A biguanide ...",
                     [("Q000494", "pharmacology", "PD")], pharmacological_actions=[("D007004", "Hypoglycemic Agents")]),
        ],
    )  # fmt: skip
    qual = write_qualifier_file(tmp_path / "qual2025.xml", synthetic_qualifiers())
    out = tmp_path / "mesh"
    manifest = parse_mesh(desc, qual, out)
    assert manifest["year"] == 2025
    assert manifest["counts"] == {"mesh_descriptors": 3, "mesh_entry_terms": 5, "mesh_qualifiers": 15}
    assert manifest["files"]["desc2025.xml"]["bytes"] == desc.stat().st_size
    assert sorted(p.name for p in out.iterdir()) == [
        "mesh.json", "mesh_descriptors.parquet", "mesh_entry_terms.parquet", "mesh_qualifiers.parquet"
    ]  # fmt: skip
    d = pq.read_table(out / "mesh_descriptors.parquet")
    assert d.schema.equals(schemas.get("mesh_descriptors").schema)
    rows = {r["descriptor_ui"]: r for r in d.to_pylist()}
    assert rows["D003920"]["categories"] == ["C"] and rows["D003920"]["category_names"] == ["Diseases"]
    assert rows["D008687"]["name"] == "Metformin"
    assert rows["D008687"]["category_names"] == ["Chemicals and Drugs"]
    q = pq.read_table(out / "mesh_qualifiers.parquet").to_pylist()
    assert [r["code"] for r in q] == [f"{i:02d}" for i in range(15)]
    assert [r["name"] for r in q] == sorted(r["name"] for r in q)
    assert (
        q[0]["name"] == "abnormalities"
        and q[0]["abbreviation"] == "AB"
        and q[0]["tree_numbers"] == ["Y01.010"]
    )
    terms = pq.read_table(out / "mesh_entry_terms.parquet").to_pylist()
    assert {t["term"] for t in terms if t["descriptor_ui"] == "D000740"} == {
        "Anemia, Sickle Cell", "Sickle Cell Anemia", "HbS Disease"
    }  # fmt: skip

    # the vocabulary loaded from the folder: entry terms, exact categories, scope notes
    vocab = load_nlm(out)
    assert vocab.label == f"nlm:{out} (2025)"
    assert vocab.lacks == ()
    assert vocab.qualifier_rows()[5]["scope_note"] == "Used for the diagnosis aspect of a subject."
    assert (vocab.descriptor_uis.index("D000740"), "HbS Disease") in vocab.terms

    # a failed re-parse leaves no mesh.json behind: the folder is marked incomplete
    bad = write(tmp_path / "desc2026.xml", REAL_RECORD[:500])
    with pytest.raises(MeshXMLError):
        parse_mesh(bad, qual, out)
    assert not (out / "mesh.json").exists()
    assert not list(out.glob(".*tmp"))
    with pytest.raises(VocabularyError, match="m1 mesh fetch"):
        load_nlm(out)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass


@pytest.fixture()
def nlm_mirror(tmp_path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving NLM's folder layout (MESH_FILES/xmlmesh/ for the current year)."""
    root = tmp_path / "www"
    (root / "MESH_FILES" / "xmlmesh").mkdir(parents=True)
    write(root / "MESH_FILES" / "xmlmesh" / "desc2025.xml", REAL_RECORD)
    write(root / "MESH_FILES" / "xmlmesh" / "qual2025.xml", REAL_QUALIFIER)
    (root / "2019" / "xmlmesh").mkdir(parents=True)
    write(root / "2019" / "xmlmesh" / "desc2019.xml", REAL_RECORD)
    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_downloads_atomically_then_parses(tmp_path, nlm_mirror, capsys):
    base, _ = nlm_mirror
    out = tmp_path / "mesh"
    assert candidate_urls(base, 2025, "desc2025.xml") == [
        f"{base}/2025/xmlmesh/desc2025.xml", f"{base}/MESH_FILES/xmlmesh/desc2025.xml"
    ]  # fmt: skip
    rc = main(["mesh", "fetch", "--year", "2025", "--dir", str(out), "--base-url", base])
    assert rc == 0
    assert (out / "desc2025.xml").read_text(encoding="utf-8") == REAL_RECORD
    assert json.loads((out / "mesh.json").read_text())["counts"]["mesh_descriptors"] == 1
    assert not list(out.glob(".*part"))
    printed = capsys.readouterr().out
    assert "1 descriptors" in printed and "MESH_FILES/xmlmesh/desc2025.xml" in printed
    # a second fetch keeps the files it has
    fetch_mesh(2025, out, base_url=base)
    assert "already here" in capsys.readouterr().out


def test_fetch_errors_name_every_url_tried(tmp_path, nlm_mirror):
    base, _ = nlm_mirror
    with pytest.raises(MeshFetchError) as err:
        fetch_mesh(2019, tmp_path / "m", base_url=base, log=False)  # desc2019 exists, qual2019 does not
    assert "qual2019.xml" in str(err.value)
    assert f"{base}/2019/xmlmesh/qual2019.xml: HTTP 404" in str(err.value)
    assert f"{base}/MESH_FILES/xmlmesh/qual2019.xml: HTTP 404" in str(err.value)
    assert (tmp_path / "m" / "desc2019.xml").is_file()  # the file that exists came down
    assert not list((tmp_path / "m").glob(".*part"))
    with pytest.raises(MeshFetchError, match="127.0.0.1:9"):
        fetch_mesh(2025, tmp_path / "n", base_url="http://127.0.0.1:9", log=False, timeout=2)


def test_show_and_classify_commands(tmp_path, capsys):
    desc = write_descriptor_file(
        tmp_path / "desc2025.xml",
        [DescSpec("D000740", "Anemia, Sickle Cell", ["C15.378"], None, [("Q000175", "diagnosis", "DI")],
                  [("M0001178", True, ["Anemia, Sickle Cell", "HbS Disease"])])],
    )  # fmt: skip
    qual = write_qualifier_file(tmp_path / "qual2025.xml", synthetic_qualifiers())
    out = tmp_path / "mesh"
    assert main(["mesh", "parse", str(desc), str(qual), "--dir", str(out)]) == 0
    capsys.readouterr()
    assert main(["mesh", "show", "--dir", str(out), "--notes"]) == 0
    shown = capsys.readouterr().out
    assert "15 qualifiers" in shown and "05  Q000175      diagnosis  Used for the diagnosis aspect" in shown
    assert "lacks" not in shown
    # the synthetic vocabulary has only 15 qualifiers, not every cue's: the matcher refuses it clearly
    rc = main(["mesh", "classify", "A child with HbS disease.\\nA. x\\nB. y", "--dir", str(out)])
    assert rc != 0
    assert "the vocabulary lacks qualifiers the offline rules name" in capsys.readouterr().err
    shutil.rmtree(out)
