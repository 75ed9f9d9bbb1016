"""Source formats: one pure function per format from one raw row (a dict) to a Candidate or a Reject.

Every parser ends in :func:`build_candidate`, so all formats share the same checks, in this order:

``missing_question``       the question is missing, not a string, or empty after stripping
``bad_field``              a field has the wrong type (options not a dict/list, an option that is a dict, ...)
``duplicate_label``        two options carry the same source label (compared stripped, upper-cased)
``too_few_options``        fewer than 2 non-empty options
``answer_not_in_options``  the answer names no option, names an empty option, or (medqa) the answer text
                           disagrees with ``options[answer_idx]``

Canonical form: the question and option texts are stripped; options keep their source order and get the
labels A, B, C, ... (the answer label follows its option). Empty options are kept in place (m1 renders
them, and dropping them would change how many random numbers m1's shuffle draws for the row); a row needs
at least two non-empty ones. Values read from CSV arrive as strings: numbers in numeric fields and JSON
in nested fields (options dicts, answer lists, contexts) are decoded.

Reasons decided later, with knowledge of the whole source or the config, live in the ingest stage:
``bad_utf8`` (readers), ``question_too_long``, ``duplicate_qid`` and ``not_in_split``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.prompt import LABELS, normalize_text
from curation.strict_json import DuplicateKeyError, loads_strict

FORMATS = ("medqa", "medmcqa", "headqa", "pubmedqa", "mcq")

MISSING_QUESTION = "missing_question"
TOO_FEW_OPTIONS = "too_few_options"
DUPLICATE_LABEL = "duplicate_label"
ANSWER_NOT_IN_OPTIONS = "answer_not_in_options"
BAD_UTF8 = "bad_utf8"
QUESTION_TOO_LONG = "question_too_long"
DUPLICATE_QID = "duplicate_qid"
NOT_IN_SPLIT = "not_in_split"
BAD_FIELD = "bad_field"
REJECT_REASONS = (
    MISSING_QUESTION,
    TOO_FEW_OPTIONS,
    DUPLICATE_LABEL,
    ANSWER_NOT_IN_OPTIONS,
    BAD_UTF8,
    QUESTION_TOO_LONG,
    DUPLICATE_QID,
    NOT_IN_SPLIT,
    BAD_FIELD,
)

PUBMEDQA_OPTIONS = ("yes", "no", "maybe")


@dataclass(frozen=True)
class Candidate:
    """A row in canonical form, before the source-wide rules (shuffle, dedup, split, length)."""

    question: str
    options: list[tuple[str, str]]  # (label, text), labels A, B, C, ... in source order
    answer_label: str
    answer_text: str
    context: str | None = None
    source_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # named fields of interest (also in the raw row)

    @property
    def answer_index(self) -> int:
        return LABELS.index(self.answer_label)


@dataclass(frozen=True)
class Reject:
    """Why a row is not a question: a short reason code and a detail naming the field."""

    reason: str
    detail: str


ParseResult = Candidate | Reject
RowParser = Callable[[Mapping[str, Any]], ParseResult]


class FieldError(Exception):
    """A field has the wrong type; becomes a ``bad_field`` reject."""


# ----------------------------------------------------------------------------------------------- helpers


def get_path(row: Any, path: str) -> Any:
    """The value at a dotted path (``context.contexts``, ``choices.0.text``); None when any step is missing."""
    value = row
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.lstrip("-").isdigit():
            index = int(part)
            value = value[index] if -len(value) <= index < len(value) else None
        else:
            return None
        if value is None:
            return None
    return value


def _decode_json_text(value: Any, kinds: tuple[type, ...], field_name: str) -> Any:
    """CSV cells hold nested values as JSON text: decode them when they look like the expected container.

    A repeated key inside that JSON (two "A" options) is a ``bad_field`` reject: decoding would drop one.
    """
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            decoded = loads_strict(value)
        except DuplicateKeyError as exc:
            raise FieldError(
                f"{field_name!r} repeats the key {exc.key!r}; one of the two would be lost"
            ) from None
        except (ValueError, RecursionError):
            return value
        if isinstance(decoded, kinds):
            return decoded
    return value


def _option_text(value: Any, field_name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise FieldError(f"option {field_name!r} is a {type(value).__name__}, expected text")


def _as_int(value: Any, field_name: str) -> int:
    """An integer field (also accepts integral floats and numeric strings, as CSV gives them)."""
    if isinstance(value, bool):
        raise FieldError(f"{field_name!r} is a bool, expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise FieldError(f"{field_name!r} is {value!r}, expected an integer")


def _id_text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _norm_label(label: Any) -> str:
    return str(label).strip().upper()


AnswerRef = tuple[Literal["label", "index", "text"], Any]


def build_candidate(
    question: Any,
    labelled_options: list[tuple[str, str]],
    answer: AnswerRef,
    *,
    context: str | None = None,
    source_id: str | None = None,
    extra: dict[str, Any] | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
) -> ParseResult:
    """The shared checks; ``labelled_options`` are (source label, stripped text) in source order.

    ``answer`` is ``("label", source label)``, ``("index", 0-based position)`` or ``("text", answer text)``.
    """
    if not isinstance(question, str) or not question.strip():
        what = (
            "missing"
            if question is None
            else ("empty" if isinstance(question, str) else type(question).__name__)
        )
        return Reject(MISSING_QUESTION, f"field {question_field!r} is {what}")
    if len(labelled_options) > len(LABELS):
        return Reject(BAD_FIELD, f"{len(labelled_options)} options; at most {len(LABELS)} are supported")
    seen: dict[str, int] = {}
    for position, (label, _) in enumerate(labelled_options):
        key = _norm_label(label)
        if key in seen:
            return Reject(
                DUPLICATE_LABEL, f"option label {label!r} appears at positions {seen[key]} and {position}"
            )
        seen[key] = position
    non_empty = sum(1 for _, text in labelled_options if text)
    if non_empty < 2:
        return Reject(TOO_FEW_OPTIONS, f"{non_empty} non-empty option(s); at least 2 are needed")

    kind, value = answer
    index: int | None = None
    if value is None or (isinstance(value, str) and not value.strip()):
        return Reject(ANSWER_NOT_IN_OPTIONS, f"answer field {answer_field!r} is missing")
    if kind == "label":
        index = seen.get(_norm_label(value))
    elif kind == "index":
        index = value if 0 <= value < len(labelled_options) else None
    else:
        if not isinstance(value, str):
            return Reject(
                BAD_FIELD, f"answer field {answer_field!r} is a {type(value).__name__}, expected text"
            )
        target = normalize_text(value)
        index = next(
            (i for i, (_, t) in enumerate(labelled_options) if t and normalize_text(t) == target), None
        )
    if index is None:
        return Reject(ANSWER_NOT_IN_OPTIONS, f"answer {value!r} (field {answer_field!r}) names no option")
    if not labelled_options[index][1]:
        return Reject(
            ANSWER_NOT_IN_OPTIONS, f"answer {value!r} (field {answer_field!r}) names an empty option"
        )

    options = [(LABELS[i], text) for i, (_, text) in enumerate(labelled_options)]
    return Candidate(
        question=question.strip(),
        options=options,
        answer_label=LABELS[index],
        answer_text=options[index][1],
        context=context,
        source_id=source_id,
        extra=extra or {},
    )


def _guard(parse: Callable[..., ParseResult]) -> Callable[..., ParseResult]:
    """Turn a FieldError raised while reading fields into a ``bad_field`` reject."""

    def wrapped(row: Mapping[str, Any], *args: Any) -> ParseResult:
        if not isinstance(row, Mapping):
            return Reject(BAD_FIELD, f"row is a {type(row).__name__}, expected an object")
        try:
            return parse(row, *args)
        except FieldError as exc:
            return Reject(BAD_FIELD, str(exc))

    wrapped.__name__ = parse.__name__
    wrapped.__doc__ = parse.__doc__
    return wrapped


def _dict_options(value: Any, field_name: str) -> list[tuple[str, str]]:
    value = _decode_json_text(value, (dict,), field_name)
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise FieldError(f"{field_name!r} is a {type(value).__name__}, expected an object {{label: text}}")
    return [(str(label), _option_text(text, f"{field_name}.{label}")) for label, text in value.items()]


# ----------------------------------------------------------------------------------------------- formats


@_guard
def parse_medqa(row: Mapping[str, Any]) -> ParseResult:
    """MedQA-USMLE: question, options {A..: text}, answer_idx (letter), answer (text, must agree)."""
    options = _dict_options(row.get("options"), "options")
    answer_idx = row.get("answer_idx")
    if answer_idx is not None and not isinstance(answer_idx, str):
        raise FieldError(f"'answer_idx' is a {type(answer_idx).__name__}, expected a letter")
    result = build_candidate(
        row.get("question"),
        options,
        ("label", answer_idx),
        source_id=_id_text(row.get("id")),
        answer_field="answer_idx",
    )
    answer_text = row.get("answer")
    if isinstance(result, Candidate) and answer_text is not None:
        if not isinstance(answer_text, str):
            raise FieldError(f"'answer' is a {type(answer_text).__name__}, expected text")
        if normalize_text(answer_text) != normalize_text(result.answer_text):
            return Reject(
                ANSWER_NOT_IN_OPTIONS,
                f"'answer' {answer_text!r} disagrees with options[{answer_idx!r}] {result.answer_text!r}",
            )
    return result


MEDMCQA_OPTION_FIELDS = ("opa", "opb", "opc", "opd")


@_guard
def parse_medmcqa(row: Mapping[str, Any]) -> ParseResult:
    """MedMCQA: id, question, opa..opd, cop 0-3 (-> A-D); exp, subject_name, topic_name, choice_type kept."""
    options = [(LABELS[i], _option_text(row.get(f), f)) for i, f in enumerate(MEDMCQA_OPTION_FIELDS)]
    cop = row.get("cop")
    answer: AnswerRef = ("index", None if cop is None or cop == "" else _as_int(cop, "cop"))
    extra = {
        k: row.get(k) for k in ("exp", "subject_name", "topic_name", "choice_type") if row.get(k) is not None
    }
    return build_candidate(
        row.get("question"),
        options,
        answer,
        source_id=_id_text(row.get("id")),
        extra=extra,
        answer_field="cop",
    )


@_guard
def parse_headqa(row: Mapping[str, Any]) -> ParseResult:
    """HEAD-QA: qid, qtext, ra (the right aid), answers [{aid, atext}] -> labels A.. in aid order."""
    answers = _decode_json_text(row.get("answers"), (list,), "answers")
    if answers is None:
        answers = []
    if not isinstance(answers, list):
        raise FieldError(f"'answers' is a {type(answers).__name__}, expected a list of {{aid, atext}}")
    by_aid: list[tuple[int, str]] = []
    for position, item in enumerate(answers):
        if not isinstance(item, Mapping) or item.get("aid") is None:
            raise FieldError(f"'answers[{position}]' is not an object with an 'aid'")
        by_aid.append(
            (
                _as_int(item["aid"], f"answers[{position}].aid"),
                _option_text(item.get("atext"), f"answers[{position}].atext"),
            )
        )
    by_aid.sort(key=lambda pair: pair[0])  # stable: duplicate aids stay visible to the duplicate check
    ra = row.get("ra")
    answer: AnswerRef = ("label", None if ra is None or ra == "" else str(_as_int(ra, "ra")))
    name, number = _id_text(row.get("name")), _id_text(row.get("qid"))
    # HEAD-QA numbers questions within one exam: the exam name makes the id unique.
    source_id = f"{name}/{number}" if name and number else number
    extra = {k: row.get(k) for k in ("category", "year", "name", "image") if row.get(k) not in (None, "")}
    return build_candidate(
        row.get("qtext"),
        [(str(aid), text) for aid, text in by_aid],
        answer,
        source_id=source_id,
        extra=extra,
        question_field="qtext",
        answer_field="ra",
    )


@_guard
def parse_pubmedqa(row: Mapping[str, Any]) -> ParseResult:
    """PubMedQA pqa_labeled: options yes/no/maybe, answer final_decision, context = contexts joined by "\\n"."""
    context_field = _decode_json_text(row.get("context"), (dict,), "context")
    if not isinstance(context_field, Mapping):
        kind = "missing" if context_field is None else f"a {type(context_field).__name__}"
        raise FieldError(f"'context' is {kind}, expected an object with 'contexts'")
    contexts = context_field.get("contexts")
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise FieldError("'context.contexts' is not a list of strings")
    decision = row.get("final_decision")
    if decision is not None and not isinstance(decision, str):
        raise FieldError(f"'final_decision' is a {type(decision).__name__}, expected yes/no/maybe")
    options = [(label, text) for label, text in zip(LABELS, PUBMEDQA_OPTIONS, strict=False)]
    answer: AnswerRef = ("text", decision.strip().lower() if isinstance(decision, str) else None)
    extra = {
        "meshes": context_field.get("meshes"),
        "labels": context_field.get("labels"),
        "long_answer": row.get("long_answer"),
    }
    return build_candidate(
        row.get("question"),
        options,
        answer,
        context="\n".join(contexts),
        source_id=_id_text(row.get("pubid")),
        extra={k: v for k, v in extra.items() if v is not None},
        answer_field="final_decision",
    )


class McqMapping(BaseModel):
    """Where the fields of a new multiple-choice pool live (dotted paths such as ``item.stem`` are allowed).

    ``options`` is one field holding a dict ``{label: text}``, a list of strings (labels A, B, ... in list
    order) or a list of objects (``option_label_key``/``option_text_key``; without a label key, list order);
    or a list of several fields (``["opa", "opb", "opc", "opd", "ope"]``, labels A, B, ... in that order).
    ``answer_type`` says what ``answer`` holds: a label, a 0- or 1-based index, or the answer text.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    question: str = "question"
    options: str | list[str] = "options"
    option_label_key: str | None = "label"
    option_text_key: str = "text"
    answer: str = "answer"
    answer_type: Literal["label", "index0", "index1", "text"] = "label"
    id: str | None = None
    context: str | None = Field(
        default=None, description="a text field, or a list of texts joined by newlines"
    )

    @model_validator(mode="after")
    def _check_columns(self) -> McqMapping:
        if isinstance(self.options, list) and not 2 <= len(self.options) <= len(LABELS):
            raise ValueError(
                f"options: give between 2 and {len(LABELS)} option fields, got {len(self.options)}"
            )
        return self


def _mapped_options(row: Mapping[str, Any], mapping: McqMapping) -> list[tuple[str, str]]:
    if isinstance(mapping.options, list):
        return [
            (LABELS[i], _option_text(get_path(row, path), path)) for i, path in enumerate(mapping.options)
        ]
    path = mapping.options
    value = _decode_json_text(get_path(row, path), (dict, list), path)
    if value is None:
        return []
    if isinstance(value, Mapping):
        return _dict_options(value, path)
    if not isinstance(value, list):
        raise FieldError(f"{path!r} is a {type(value).__name__}, expected a dict or a list of options")
    options = []
    for position, item in enumerate(value):
        if isinstance(item, Mapping):
            if mapping.option_text_key not in item:
                raise FieldError(f"'{path}[{position}]' has no {mapping.option_text_key!r}")
            has_label = (
                mapping.option_label_key is not None and item.get(mapping.option_label_key) is not None
            )
            label = (
                str(item[mapping.option_label_key]) if has_label else LABELS[min(position, len(LABELS) - 1)]
            )
            options.append((label, _option_text(item[mapping.option_text_key], f"{path}[{position}]")))
        else:
            label = LABELS[position] if position < len(LABELS) else str(position)
            options.append((label, _option_text(item, f"{path}[{position}]")))
    return options


def _mapped_context(row: Mapping[str, Any], path: str) -> str | None:
    value = _decode_json_text(get_path(row, path), (list,), path)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise FieldError(f"context {path!r} is a {type(value).__name__}, expected text or a list of texts")


@_guard
def parse_mcq(row: Mapping[str, Any], mapping: McqMapping) -> ParseResult:
    """Any pool described by a :class:`McqMapping`."""
    options = _mapped_options(row, mapping)
    raw_answer = get_path(row, mapping.answer)
    answer: AnswerRef
    if mapping.answer_type in ("index0", "index1") and raw_answer not in (None, ""):
        answer = (
            "index",
            _as_int(raw_answer, mapping.answer) - (1 if mapping.answer_type == "index1" else 0),
        )
    elif mapping.answer_type == "label":
        if isinstance(raw_answer, bool) or isinstance(raw_answer, dict | list):
            raise FieldError(f"answer {mapping.answer!r} is a {type(raw_answer).__name__}, expected a label")
        answer = ("label", None if raw_answer is None else str(raw_answer))
    else:
        answer = (
            "text" if mapping.answer_type == "text" else "index",
            raw_answer if raw_answer != "" else None,
        )
    return build_candidate(
        get_path(row, mapping.question),
        options,
        answer,
        context=_mapped_context(row, mapping.context) if mapping.context else None,
        source_id=_id_text(get_path(row, mapping.id)) if mapping.id else None,
        question_field=mapping.question,
        answer_field=mapping.answer,
    )


_PARSERS: dict[str, RowParser] = {
    "medqa": parse_medqa,
    "medmcqa": parse_medmcqa,
    "headqa": parse_headqa,
    "pubmedqa": parse_pubmedqa,
}


def get_parser(format: str, mapping: McqMapping | Mapping[str, Any] | None = None) -> RowParser:
    """The row parser for ``format``; ``mcq`` needs a mapping (a McqMapping or its dict form)."""
    if format == "mcq":
        if mapping is None:
            raise ValueError("format 'mcq' needs a mapping (question, options, answer, ...)")
        resolved = mapping if isinstance(mapping, McqMapping) else McqMapping.model_validate(mapping)
        return lambda row: parse_mcq(row, resolved)
    if format not in _PARSERS:
        raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    return _PARSERS[format]


def pubmedqa_split_indices(n: int, *, seed: int = 0, test_size: float = 0.5) -> tuple[list[int], list[int]]:
    """m1's PubMedQA split: what ``Dataset.train_test_split(test_size=0.5, seed=0)`` picks, as row indices.

    datasets (arrow_dataset.py, train_test_split): ``n_test = ceil(test_size * n)``, ``n_train = n - n_test``,
    ``permutation = np.random.default_rng(seed).permutation(n)``, ``test = permutation[:n_test]``,
    ``train = permutation[n_test:n_test + n_train]``; each split keeps its rows in that permutation order.
    """
    n_test = math.ceil(test_size * n)
    permutation = np.random.default_rng(seed).permutation(n)
    return permutation[n_test:].tolist(), permutation[:n_test].tolist()
