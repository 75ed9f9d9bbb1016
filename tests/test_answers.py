"""curation.answers: strict extraction over an adversarial corpus, think splitting, judging, the m1 matcher."""

from __future__ import annotations

import pytest
from answer_corpus import CASES, OPTION_SETS, PUBMEDQA, SNAKES, TRICKY

from curation.answers import (
    M1Match,
    extract_answer,
    judge,
    m1_accuracy,
    m1_match,
    strip_think,
)


def test_corpus_is_large_and_covers_invalid_outcomes() -> None:
    assert len(CASES) >= 100
    assert len({case[0] for case in CASES}) == len(CASES), "case ids must be unique"
    invalid = [case for case in CASES if case[3] is None]
    assert len(invalid) >= 30


@pytest.mark.parametrize(
    ("case_id", "response", "options", "expected", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_corpus(case_id: str, response: str, options: str, expected: str | None, reason: str | None) -> None:
    got = extract_answer(response, OPTION_SETS[options])
    assert got.label == expected, f"{case_id}: {got}"
    assert got.reason, "every outcome says how it was decided"
    if reason is not None:
        assert reason in got.reason, f"{case_id}: reason {got.reason!r} lacks {reason!r}"


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_every_option_is_readable_in_every_form(name: str) -> None:
    options = OPTION_SETS[name]
    for label, text in options.items():
        # A text that is itself a label reads as that label (the bare-label rule): only its labelled forms apply.
        text_is_label = text.strip().upper() in options
        text_alone = () if text_is_label else (f"\\boxed{{{text}}}", f"Answer: {text}", text)
        for response in (
            f"\\boxed{{{label}}}",
            f"\\boxed{{{label.lower()}}}",
            f"\\boxed{{\\text{{{label}. {text}}}}}",
            f"The answer is {label}.",
            f"Final Answer: {label}. {text}",
            label,
            f"({label}) {text}",
            *text_alone,
        ):
            got = extract_answer(response, options)
            assert got.label == label, f"{name}: {response!r} -> {got}"


def test_first_character_bug_does_not_survive() -> None:
    # m1 accepted any string whose first character is the key letter.
    for response in ("Cobra venom", "\\boxed{Copperhead}", "Answer: Coral snake", "Constrictor"):
        assert extract_answer(response, SNAKES).label is None, response
    # ... and for options whose texts begin with other options' letters, the text wins over the letter.
    assert extract_answer("\\boxed{B cells}", TRICKY).label == "A"
    assert extract_answer("\\boxed{D-dimer}", TRICKY).label == "C"


def test_invalid_reasons_are_specific() -> None:
    assert "empty" in extract_answer("\\boxed{}", SNAKES).reason
    assert "several letters (A, C)" in extract_answer("\\boxed{A and C}", SNAKES).reason
    assert "letter E is not an option (A-D)" in extract_answer("\\boxed{E}", SNAKES).reason
    assert "matches no option" in extract_answer("\\boxed{Cobra venom}", SNAKES).reason
    assert "not an option (A/B)" in extract_answer("\\boxed{C}", {"A": "x", "B": "y"}).reason


def test_strip_think_splits_r1_and_m1_responses() -> None:
    assert strip_think("<think>\nwhy\n</think>\n\nC") == ("why", "C")
    assert strip_think("why\n</think>C") == ("why", "C")  # the template opened <think> in the prompt
    assert strip_think("<think>still thinking") == ("still thinking", None)
    assert strip_think("plain answer") == (None, "plain answer")
    assert strip_think("<|im_start|>think\nwhy\n<|im_start|>answer\nAnswer: C") == ("why", "Answer: C")
    assert strip_think("<|im_start|>think\nwhy") == ("why", None)
    # the answer is what follows the LAST </think>
    assert strip_think("<think>a</think>b</think>c")[1] == "c"


def test_judge_outcomes() -> None:
    assert judge("\\boxed{C}", SNAKES, "C") == "correct"
    assert judge("\\boxed{B}", SNAKES, "C") == "wrong"
    assert judge("\\boxed{}", SNAKES, "C") == "invalid"
    assert judge("Cobra venom", SNAKES, "C") == "invalid"
    assert judge("The answer is maybe.", PUBMEDQA, "C") == "correct"
    assert judge("\\boxed{c}", SNAKES, "c") == "correct"


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="2 to 26 options"):
        extract_answer("A", {"A": "only"})
    with pytest.raises(ValueError, match="2 to 26 options"):
        extract_answer("A", {f"{i}": "x" for i in range(27)})
    with pytest.raises(ValueError, match="not a single letter"):
        extract_answer("A", {"A": "x", "AB": "y"})
    with pytest.raises(ValueError, match="unknown answer mode"):
        extract_answer("A", SNAKES, mode="loose")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ m1 mode
def test_m1_mode_always_picks_an_option() -> None:
    for response in ("", "I have no idea", "Cobra venom", "\\boxed{}", "The answer is A and C"):
        got = extract_answer(response, SNAKES, mode="m1")
        assert got.label in SNAKES, response
        assert got.reason.startswith("m1 matcher")


def test_m1_matcher_steps() -> None:
    # strict "answer is": first and last
    assert m1_match("the answer is A. Then again, the answer is C", SNAKES) == M1Match("A", "C", "answer is")
    # only the part after the last answer header counts
    assert m1_match("the answer is A\nAnswer: the answer is D", SNAKES) == M1Match("D", "D", "answer is")
    # a standalone letter; each hit consumes its neighbours, so "A,B" yields only A (the original's quirk)
    assert m1_match("Answer: A,B", SNAKES) == M1Match("A", "A", "letter")
    # "A " followed by a space is the article
    assert m1_match("Answer: A cobra, surely", SNAKES) == M1Match("C", "C", "option text")
    # option text: last = latest last occurrence; first = latest FIRST occurrence (the original's quirk)
    assert m1_match("viper or cobra? cobra, not viper", SNAKES) == M1Match("C", "A", "option text")
    # m1's first-character bug lives on here: "cobra venom" counts as the Cobra option
    assert m1_match("cobra venom", SNAKES).last == "C"
    # nothing at all: the most similar option text (ties to the later option)
    assert m1_match("pythn", SNAKES) == M1Match("B", "B", "similarity")
    assert m1_match("", {"A": "x", "B": "y"}) == M1Match("B", "B", "similarity")
    # letters beyond the option count are not taken as answers in the loose step
    assert m1_match("Answer: E", SNAKES).kind != "letter"


def test_m1_accuracy_is_the_better_of_head_and_tail() -> None:
    matches = [M1Match("A", "C", "answer is"), M1Match("B", "B", "letter"), M1Match("D", "A", "letter")]
    assert m1_accuracy(matches, ["C", "B", "D"]) == pytest.approx(2 / 3)  # head: B, D; tail: C, B
    assert m1_accuracy(matches, ["A", "B", "A"]) == pytest.approx(2 / 3)  # head: A, B; tail: B, A
    assert m1_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        m1_accuracy(matches, ["A"])


def test_strict_and_m1_disagree_where_m1_guesses() -> None:
    response = "Cobra venom"
    assert extract_answer(response, SNAKES).label is None
    assert extract_answer(response, SNAKES, mode="m1").label == "C"
    assert judge(response, SNAKES, "C", mode="m1") == "correct"
    assert judge(response, SNAKES, "C") == "invalid"


def test_figure_label_items_of_a_medbullets_file_are_judged_by_their_label() -> None:
    """Issue 20: MedBullets figure items have option texts that are letters; a boxed letter names the label."""
    from pathlib import Path

    from evaluation.benchmarks import load_benchmark
    from evaluation.config import BenchmarkConfig

    path = Path(__file__).parent / "fixtures" / "eval" / "medbullets_op4.jsonl"
    samples = load_benchmark(BenchmarkConfig(name="medbullets_op4", path=str(path)))
    assert len(samples) == 6
    letter_texts = [s for s in samples if any(t.strip() in s.options for t in s.options.values())]
    assert len(letter_texts) == 2
    for sample in samples:
        key = sample.answer_label
        assert judge(f"The answer is \\boxed{{{key}}}", sample.options, key) == "correct", sample
        assert judge(f"Answer: {key}", sample.options, key) == "correct", sample
        wrong = next(label for label in sample.options if label != key)
        assert judge(f"\\boxed{{{wrong}}}", sample.options, key) == "wrong", sample
    figure = letter_texts[0]  # A. B / B. C / C. A / D. E, key C
    # The option whose text is "C" is B: the old reading of \boxed{C} as B's text scored this wrong.
    assert extract_answer("\\boxed{C}", figure.options).label == "C"
    assert extract_answer("\\boxed{E}", figure.options).label == "D"  # E is not a label: option D's text
    # m1 mode reads letters before option texts already: it agrees.
    assert extract_answer("The answer is \\boxed{C}", figure.options, mode="m1").label == "C"
    assert m1_match("Answer: C", figure.options).last == "C"
