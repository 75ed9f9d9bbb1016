"""Each source format, one raw row at a time: canonical candidates and every reject reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from curation.formats import (
    Candidate,
    McqMapping,
    Reject,
    get_parser,
    get_path,
    parse_headqa,
    parse_mcq,
    parse_medmcqa,
    parse_medqa,
    parse_pubmedqa,
    pubmedqa_split_indices,
)

MEDQA = {
    "question": " A 34-year-old woman has fatigue. Which drug is most appropriate? ",
    "answer": "Levothyroxine",
    "options": {"A": "Methimazole", "B": "Levothyroxine", "C": "Propranolol", "D": "Radioactive iodine"},
    "answer_idx": "B",
    "meta_info": "step2&3",
}
MEDMCQA = {
    "id": "e9ad821a",
    "question": "Drug of choice for absence seizures is:",
    "opa": "Phenytoin",
    "opb": "Valproate",
    "opc": "Ethosuximide",
    "opd": "Lamotrigine",
    "cop": 2,
    "choice_type": "single",
    "exp": "T-type calcium channels.",
    "subject_name": "Pharmacology",
    "topic_name": "CNS",
}
HEADQA = {
    "name": "Cuaderno_2014_1_B",
    "qid": 7,
    "qtext": "The enzyme that unwinds DNA is:",
    "ra": 3,
    "answers": [
        {"aid": 3, "atext": "Helicase"},
        {"aid": 1, "atext": "Ligase"},
        {"aid": 2, "atext": "Primase"},
    ],
    "category": "biology",
    "year": "2014",
    "image": "",
}
PUBMEDQA = {
    "pubid": 21645374,
    "question": "Does early mobilisation shorten hospital stay?",
    "context": {
        "contexts": ["Background.", "Methods."],
        "labels": ["BACKGROUND", "METHODS"],
        "meshes": ["Humans"],
    },
    "long_answer": "Yes, it does.",
    "final_decision": "Yes",
}


def reason(result: Candidate | Reject) -> str:
    assert isinstance(result, Reject), result
    return result.reason


def test_medqa_candidate() -> None:
    c = parse_medqa(MEDQA)
    assert isinstance(c, Candidate)
    assert c.question == "A 34-year-old woman has fatigue. Which drug is most appropriate?"
    assert c.options == [
        ("A", "Methimazole"),
        ("B", "Levothyroxine"),
        ("C", "Propranolol"),
        ("D", "Radioactive iodine"),
    ]
    assert (c.answer_label, c.answer_text, c.context, c.source_id) == ("B", "Levothyroxine", None, None)


def test_medqa_five_options_and_answer_text_case() -> None:
    row = dict(MEDQA, options={**MEDQA["options"], "E": "Prednisone"}, answer="levothyroxine ")
    c = parse_medqa(row)
    assert isinstance(c, Candidate) and len(c.options) == 5 and c.answer_label == "B"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"question": ""}, "missing_question"),
        ({"question": None}, "missing_question"),
        ({"question": 42}, "missing_question"),
        ({"options": ["Methimazole", "Levothyroxine"]}, "bad_field"),
        ({"answer_idx": 1}, "bad_field"),
        ({"answer": "Propranolol"}, "answer_not_in_options"),
        ({"answer_idx": "F"}, "answer_not_in_options"),
        ({"answer_idx": None}, "answer_not_in_options"),
        (
            {"options": {"A": "Methimazole", "B": " "}, "answer_idx": "A", "answer": "Methimazole"},
            "too_few_options",
        ),
        ({"options": {"A": "Methimazole", "a": "Levothyroxine"}}, "duplicate_label"),
    ],
)
def test_medqa_rejects(change: dict, expected: str) -> None:
    assert reason(parse_medqa(dict(MEDQA, **change))) == expected


def test_medqa_reject_detail_names_the_field() -> None:
    r = parse_medqa(dict(MEDQA, answer="Propranolol"))
    assert isinstance(r, Reject) and "'answer'" in r.detail and "Levothyroxine" in r.detail


def test_medmcqa_candidate_and_metadata() -> None:
    c = parse_medmcqa(MEDMCQA)
    assert isinstance(c, Candidate)
    assert [t for _, t in c.options] == ["Phenytoin", "Valproate", "Ethosuximide", "Lamotrigine"]
    assert (c.answer_label, c.answer_text, c.source_id) == ("C", "Ethosuximide", "e9ad821a")
    assert c.extra == {
        "exp": "T-type calcium channels.",
        "subject_name": "Pharmacology",
        "topic_name": "CNS",
        "choice_type": "single",
    }
    # CSV gives strings: a numeric cop string is an index too.
    assert parse_medmcqa(dict(MEDMCQA, cop="3")).answer_label == "D"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"cop": 4}, "answer_not_in_options"),
        ({"cop": -1}, "answer_not_in_options"),
        ({"cop": None}, "answer_not_in_options"),
        ({"cop": "b"}, "bad_field"),
        ({"cop": True}, "bad_field"),
        ({"opc": ""}, "answer_not_in_options"),  # the answer names an empty option
        ({"opb": "", "opc": "", "opd": None, "cop": 0}, "too_few_options"),
        ({"opa": {"text": "x"}}, "bad_field"),
        ({"question": "   "}, "missing_question"),
    ],
)
def test_medmcqa_rejects(change: dict, expected: str) -> None:
    assert reason(parse_medmcqa(dict(MEDMCQA, **change))) == expected


def test_medmcqa_keeps_an_empty_option_in_place() -> None:
    c = parse_medmcqa(dict(MEDMCQA, opd="", cop=0))
    assert isinstance(c, Candidate) and c.options[3] == ("D", "") and c.answer_label == "A"


def test_headqa_labels_in_aid_order() -> None:
    c = parse_headqa(HEADQA)
    assert isinstance(c, Candidate)
    assert c.options == [("A", "Ligase"), ("B", "Primase"), ("C", "Helicase")]
    assert (c.answer_label, c.answer_text, c.source_id) == ("C", "Helicase", "Cuaderno_2014_1_B/7")
    assert c.extra == {"category": "biology", "year": "2014", "name": "Cuaderno_2014_1_B"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"answers": [{"aid": 1, "atext": "x"}, {"aid": 1, "atext": "y"}]}, "duplicate_label"),
        ({"ra": 9}, "answer_not_in_options"),
        ({"answers": "1) a 2) b"}, "bad_field"),
        ({"answers": [{"atext": "no aid"}, {"aid": 2, "atext": "y"}]}, "bad_field"),
        ({"qtext": None}, "missing_question"),
        ({"answers": [{"aid": 3, "atext": "Helicase"}]}, "too_few_options"),
    ],
)
def test_headqa_rejects(change: dict, expected: str) -> None:
    assert reason(parse_headqa(dict(HEADQA, **change))) == expected


def test_pubmedqa_candidate() -> None:
    c = parse_pubmedqa(PUBMEDQA)
    assert isinstance(c, Candidate)
    assert c.options == [("A", "yes"), ("B", "no"), ("C", "maybe")]
    assert (c.answer_label, c.answer_text) == ("A", "yes")
    assert c.context == "Background.\nMethods."
    assert c.source_id == "21645374"
    assert c.extra["meshes"] == ["Humans"]  # the gold MeSH signal


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"final_decision": "perhaps"}, "answer_not_in_options"),
        ({"final_decision": None}, "answer_not_in_options"),
        ({"context": {"contexts": "a string"}}, "bad_field"),
        ({"context": None}, "bad_field"),
        ({"question": ""}, "missing_question"),
    ],
)
def test_pubmedqa_rejects(change: dict, expected: str) -> None:
    assert reason(parse_pubmedqa(dict(PUBMEDQA, **change))) == expected


def test_mcq_dict_options_and_label_answer() -> None:
    mapping = McqMapping(question="q", options="opts", answer="key", id="uid")
    c = parse_mcq({"uid": 17, "q": "Q?", "opts": {"1": "one", "2": "two", "3": "three"}, "key": "2"}, mapping)
    assert isinstance(c, Candidate)
    assert (
        c.options == [("A", "one"), ("B", "two"), ("C", "three")]
        and c.answer_label == "B"
        and c.source_id == "17"
    )


def test_mcq_list_of_strings_ten_options_index1() -> None:
    texts = [f"choice {i}" for i in range(10)]
    mapping = McqMapping(
        question="item.stem", options="item.choices", answer="item.correct", answer_type="index1"
    )
    c = parse_mcq({"item": {"stem": "Ten?", "choices": texts, "correct": 10}}, mapping)
    assert isinstance(c, Candidate)
    assert [label for label, _ in c.options] == list("ABCDEFGHIJ")
    assert (c.answer_label, c.answer_text) == ("J", "choice 9")


def test_mcq_objects_and_columns_and_text_answer() -> None:
    objects = McqMapping(options="choices", option_label_key="letter", option_text_key="body", answer="ans")
    row = {
        "question": "Q?",
        "choices": [{"letter": "x", "body": "first"}, {"letter": "y", "body": "second"}],
        "ans": "Y",
    }
    assert parse_mcq(row, objects).answer_text == "second"  # type: ignore[union-attr]
    columns = McqMapping(options=["opa", "opb", "opc", "opd", "ope"], answer="answer", answer_type="text")
    row = {"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "ope": "Eee", "answer": "eee"}
    c = parse_mcq(row, columns)
    assert isinstance(c, Candidate) and c.answer_label == "E"
    index0 = McqMapping(options="o", answer="a", answer_type="index0", context="ctx")
    c = parse_mcq({"question": "Q", "o": ["p", "q"], "a": 0, "ctx": ["line 1", "line 2"]}, index0)
    assert isinstance(c, Candidate) and c.answer_label == "A" and c.context == "line 1\nline 2"


def test_mcq_rejects() -> None:
    mapping = McqMapping(options="o", answer="a")
    assert reason(parse_mcq({"question": "Q", "o": 5, "a": "A"}, mapping)) == "bad_field"
    assert reason(parse_mcq({"question": "Q", "o": ["only"], "a": "A"}, mapping)) == "too_few_options"
    assert reason(parse_mcq({"question": "Q", "o": ["p", "q"], "a": "C"}, mapping)) == "answer_not_in_options"
    assert reason(parse_mcq({"o": ["p", "q"], "a": "A"}, mapping)) == "missing_question"
    assert (
        reason(parse_mcq({"question": "Q", "o": [f"t{i}" for i in range(27)], "a": "A"}, mapping))
        == "bad_field"
    )
    assert reason(parse_mcq(["not", "an", "object"], mapping)) == "bad_field"  # type: ignore[arg-type]


def test_mcq_mapping_is_strict() -> None:
    with pytest.raises(ValidationError):
        McqMapping(question="q", options="o", answer="a", answer_kind="label")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        McqMapping(options=["only_one"])
    with pytest.raises(ValueError, match="mapping"):
        get_parser("mcq")
    with pytest.raises(ValueError, match="unknown format"):
        get_parser("usmle")


def test_get_path() -> None:
    row = {"a": {"b": [{"c": 1}, {"c": 2}]}}
    assert get_path(row, "a.b.1.c") == 2
    assert get_path(row, "a.x.c") is None
    assert get_path(row, "a.b.5.c") is None


def test_pubmedqa_split_matches_datasets_train_test_split() -> None:
    import datasets

    n = 1000
    table = datasets.Dataset.from_list(
        [
            {
                "pubid": 10_000 + i,
                "question": f"Question {i}?",
                "context": {"contexts": [f"c{i}"], "labels": ["L"], "meshes": ["Humans"]},
                "long_answer": "a",
                "final_decision": ("yes", "no", "maybe")[i % 3],
            }
            for i in range(n)
        ]
    )
    split = table.train_test_split(test_size=0.5, seed=0)
    train, test = pubmedqa_split_indices(n)
    assert len(train) == len(test) == 500
    assert [10_000 + i for i in train] == split["train"]["pubid"]  # same rows, same order
    assert [10_000 + i for i in test] == split["test"]["pubid"]
    odd_train, odd_test = pubmedqa_split_indices(11)
    odd = datasets.Dataset.from_list([{"i": i} for i in range(11)]).train_test_split(test_size=0.5, seed=0)
    assert (odd_train, odd_test) == (odd["train"]["i"], odd["test"]["i"])  # ceil for the test half
