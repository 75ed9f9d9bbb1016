"""Answer validation: which option a model's response chose, or why it chose none (INVALID).

One module for scoring, the teacher stage and evaluation, so an answer is read the same way everywhere.

Default (strict) mode, :func:`extract_answer`:

1. The answer part: text after the last ``</think>`` (R1) or ``<|im_start|>answer`` (m1) marker; a ``<think>``
   block that never closes has no answer (INVALID).
2. The last ``\\boxed{...}`` (brace-matched; falls back to ``\\fbox{...}``), unwrapping ``\\text{}``,
   ``\\textbf{}``, ``$...$`` and markdown bold; m1 keeps what follows a final ``=`` (tried after the whole box).
   The last box is authoritative: an empty or unreadable last box is INVALID even if earlier text names a letter.
3. Without a box: the last "the answer is X" / "Answer: X" / "Final Answer: X" / "correct option is X" phrase that
   names something (earlier phrases are tried when a later one names nothing, e.g. "the answer is based on ...").
4. Without either: the whole answer part, then its last non-empty line, as a bare letter, ``C. Cobra``, or an
   option's exact text.

A candidate that is exactly one of the option labels (``C``, ``(c)``, ``C.``, after unwrapping) names that label,
even when another option's text is that letter (figure items whose options are labels: ``A. B``, ``B. C``,
``C. A``): the prompt asks for the letter. Text matching applies only to candidates that are not a bare label.
Otherwise a candidate is read as: an option's exact text (case-, space- and punctuation-insensitive), a single letter
(``C``, ``(c)``, ``C.``), or a letter with its option text (``C. Cobra``, ``(C) Cobra``). It never guesses: several
different letters (``A and C``, ``A, C``, ``AC``), a letter that is not an option, a letter whose attached text is
another option's text, an empty box, or text matching no option are INVALID with a reason. m1 accepted any string
whose first character was the key's letter ("Cobra" counted as C); here "Cobra" counts only if it IS option C's
text. Options: 2 to 26, labels single letters A-Z (PubMedQA: yes/no/maybe under letter labels).

m1-compatible mode (``mode="m1"``, never the default): the HuatuoGPT-o1 / m1 evaluation matcher, reimplemented from
its description so numbers can be compared with the papers. It ALWAYS picks an option:

a. Cut the response after the last answer header present (``<|im_start|>answer``, ``Answer:``, ``## Final
   Response``, ``</think>``).
b. "answer is" followed by a capital A-N: the first and the last such letter.
c. Else any allowed letter (the first ``len(options)`` of A..N) standing alone (preceded by start, a non-word
   character or "is ", followed by a non-word character or the end; "A "/"a " followed by a space is taken as the
   article): first and last.
d. Else option texts found in the lower-cased text: ``last`` is the option whose last occurrence is latest;
   ``first`` reproduces the original's quirk (also the option whose FIRST occurrence is latest).
e. Else the option text most similar to the whole text (difflib ratio; ties go to the later option).

Each sample yields ``first`` and ``last``; the original scores a benchmark as max(accuracy of first, accuracy of
last) over the whole benchmark: :func:`m1_accuracy` does that. ``Extraction.label`` in this mode is ``last``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

Mode = Literal["strict", "m1"]
Outcome = Literal["correct", "wrong", "invalid"]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
M1_THINK_MARKER = "<|im_start|>think"
M1_ANSWER_MARKER = "<|im_start|>answer"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Extraction:
    """The chosen option letter (``None`` = INVALID), how it was decided or why it is invalid, and the text read.

    In m1 mode ``first_label`` is the matcher's head answer; in strict mode it equals ``label``."""

    label: str | None
    reason: str
    candidate: str | None = None
    first_label: str | None = None

    @property
    def valid(self) -> bool:
        return self.label is not None


# ---------------------------------------------------------------------------------------------- think blocks
def strip_think(text: str) -> tuple[str | None, str | None]:
    """Split an R1 (``<think>...</think>``) or m1 (``<|im_start|>think`` ... ``<|im_start|>answer``) response
    into (reasoning, answer). No markers: (None, text). Reasoning that never closes: (reasoning, None)."""
    if THINK_CLOSE in text:
        before, _, after = text.rpartition(THINK_CLOSE)
        start = before.find(THINK_OPEN)
        reasoning = before[start + len(THINK_OPEN) :] if start >= 0 else before
        return reasoning.strip(), after.strip()
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[1].strip(), None
    if M1_ANSWER_MARKER in text:
        before, _, after = text.rpartition(M1_ANSWER_MARKER)
        before = before.split(M1_THINK_MARKER, 1)[1] if M1_THINK_MARKER in before else before
        return before.strip(), after.strip()
    if M1_THINK_MARKER in text:
        return text.split(M1_THINK_MARKER, 1)[1].strip(), None
    return None, text


# ------------------------------------------------------------------------------------------------ options
def _check_options(options: Mapping[str, str]) -> dict[str, str]:
    if not 2 <= len(options) <= 26:
        raise ValueError(f"a question needs 2 to 26 options, got {len(options)}: {sorted(options)}")
    out: dict[str, str] = {}
    for label, text in options.items():
        if not (isinstance(label, str) and len(label) == 1 and label.upper() in LETTERS):
            raise ValueError(f"option label {label!r} is not a single letter A-Z")
        out[label.upper()] = "" if text is None else str(text)
    return out


_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = " \t\n.,;:!?\"'`*_()[]{}"


@lru_cache(maxsize=1 << 16)
def _norm(text: str) -> str:
    """Case-, space- and edge-punctuation-insensitive form used to compare answer and option texts.

    Cached: each response compares its candidates with the same option texts several times (measured: 12 calls
    per response, half of a scoring stage's judging time)."""
    return _SPACE.sub(" ", _unwrap(text)).strip(_EDGE_PUNCT).strip().lower()


# ------------------------------------------------------------------------------------------- LaTeX unwrap
_WRAPPERS = re.compile(
    r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|emph|boxed|fbox|mbox|underline)\s*\{", re.S
)


def _match_brace(text: str, open_at: int) -> int | None:
    """Index of the brace closing the one at ``open_at`` (which must be '{'), or None if it never closes."""
    depth = 0
    for i in range(open_at, len(text)):
        char = text[i]
        if char == "\\":
            continue
        if char == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif char == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return i
    return None


def _unwrap(text: str) -> str:
    """Remove LaTeX text wrappers, math delimiters and markdown emphasis around (and inside) an answer."""
    for _ in range(8):  # nested wrappers: \text{\textbf{C}} ...
        match = _WRAPPERS.search(text)
        if not match:
            break
        close = _match_brace(text, match.end() - 1)
        if close is None:
            text = text[: match.start()] + text[match.end() :]
        else:
            text = text[: match.start()] + text[match.end() : close] + text[close + 1 :]
    text = text.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    text = text.replace("$", "").replace("**", "").replace("__", "")
    text = text.replace("\\%", "%").replace("\\,", " ").replace("\\ ", " ").replace("~", " ")
    return text.strip()


_BOX = re.compile(r"\\(boxed|fbox)\s*\{")


def _boxes(text: str, kind: str) -> list[str | None]:
    """Contents of every ``\\kind{...}`` in order (None for one whose brace never closes)."""
    found: list[str | None] = []
    for match in _BOX.finditer(text):
        if match.group(1) != kind:
            continue
        close = _match_brace(text, match.end() - 1)
        found.append(None if close is None else text[match.end() : close])
    return found


# ------------------------------------------------------------------------------------- reading a candidate
@dataclass(frozen=True)
class _Read:
    label: str | None
    reason: str
    definitive: bool  # False: the candidate named nothing at all (a caller may try an earlier phrase)


_ONE_LETTER = re.compile(r"^(?:option|choice|letter)?\s*[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:)]?$", re.I)
_LETTER_LIST = re.compile(
    r"^[(\[]?([A-Za-z])[)\]]?(?:\s*(?:,|;|/|&|\+|\band\b|\bor\b)\s*[(\[]?([A-Za-z])[)\]]?)+\s*\.?$", re.I
)
_LETTER_PUNCT_TEXT = re.compile(r"^[(\[]?([A-Za-z])\s*(?:[)\]]\s*[.:\-–—]?|[.:\-–—])\s*(\S.*)$", re.S)
_LETTER_SPACE_TEXT = re.compile(r"^([A-Z])\s+(\S.*)$", re.S)
# "B, not C" / "B; it is the only constrictor": an uppercase letter, a comma, then prose.
_LETTER_COMMA_TEXT = re.compile(r"^[(\[]?([A-Z])[)\]]?\s*[,;]\s*(\S.*)$", re.S)
# An uppercase A or I followed by a lowercase word is usually the article / pronoun, unless the word says the
# letter is a label ("A is correct", "I because ...").
_LABEL_VERBS = re.compile(r"^(?:is|was|would|seems|appears|because|since|as|fits|matches)\b")
_EXPLICIT_LETTER = re.compile(
    r"(?:\b(?:option|choice|letter|answer)\s*[(\[]?\s*([A-Za-z])\b[)\]]?)|(?:\(([A-Z])\))", re.I
)
_STATED = re.compile(
    r"^(?:option\s+|choice\s+)?[(\[]?([A-Za-z])[)\]]?\s+is\s+(?:the\s+)?(?:correct|right|best)(?:\s+(?:answer|option|choice))?\s*[.!]?$",
    re.I,
)
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_SEVERAL_WORDS = re.compile(r"^(?:both|either|neither|all\s+of|none\s+of)\b", re.I)
_NEGATED = re.compile(r"^(?:not|never|unlikely|incorrect|wrong)\b", re.I)


def _letter_verdict(letter: str, options: Mapping[str, str], how: str) -> _Read:
    up = letter.upper()
    if up not in options:
        return _Read(None, f"letter {up} is not an option ({_span(options)})", True)
    return _Read(up, how, True)


def _span(options: Mapping[str, str]) -> str:
    labels = sorted(options)
    return f"{labels[0]}-{labels[-1]}" if len(labels) > 2 else "/".join(labels)


def _text_matches(norm: str, options: Mapping[str, str]) -> list[str]:
    return [label for label, text in options.items() if (opt := _norm(text)) and opt == norm]


def _prefix_match(norm: str, options: Mapping[str, str]) -> list[str]:
    """Options whose whole text begins ``norm`` at a word boundary, longest text first.

    An option whose text is itself one of the labels never matches: a candidate that starts with that letter as
    a word ("C because ...") names the label C, by the same rule as a bare label."""
    hits = []
    for label, text in options.items():
        opt = _norm(text)
        if len(opt) == 1 and opt.upper() in options:
            continue
        if opt and norm.startswith(opt) and (len(norm) == len(opt) or not norm[len(opt)].isalnum()):
            hits.append((len(opt), label))
    if not hits:
        return []
    longest = max(n for n, _ in hits)
    return sorted(label for n, label in hits if n == longest)


def _read_candidate(raw: str, options: Mapping[str, str], *, prose: bool, where: str) -> _Read:
    """Read one candidate answer string (box content, the rest of an "Answer:" line, a bare last line).

    ``prose``: the candidate may continue with an explanation ("C because ...", "Cobra, since ...")."""
    text = _unwrap(raw).strip()
    text = _SPACE.sub(" ", text).strip()
    if not text.strip(_EDGE_PUNCT):
        return _Read(None, f"empty {where}", not prose)
    if prose and _NEGATED.match(text):
        return _Read(None, f"{where} is negated", False)
    norm = _norm(text)

    # A bare label names that label, even when another option's text is that letter (figure-label options
    # "A. B / B. C / C. A"): the prompt asks for the option's letter. Text matching is for everything else.
    bare = _ONE_LETTER.match(text)
    if bare and bare.group(1).upper() in options:
        return _letter_verdict(bare.group(1), options, f"{where}: letter {bare.group(1).upper()}")

    exact = _text_matches(norm, options)
    if len(exact) == 1:
        return _Read(exact[0], f"{where}: exact text of option {exact[0]}", True)
    if len(exact) > 1:
        return _Read(None, f"{where}: text matches several options ({', '.join(exact)})", True)

    stated = _STATED.match(text)
    if stated:
        return _letter_verdict(stated.group(1), options, f"{where}: '{text[:40]}'")
    one = _ONE_LETTER.match(text)
    if one:
        return _letter_verdict(one.group(1), options, f"{where}: letter {one.group(1).upper()}")

    listed = _LETTER_LIST.match(text)
    if listed:
        letters = sorted({x.upper() for x in re.findall(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])", text)})
        if len(letters) > 1:
            return _Read(None, f"{where}: several letters ({', '.join(letters)})", True)
        return _letter_verdict(letters[0], options, f"{where}: letter {letters[0]}")
    if re.fullmatch(r"[A-Z]{2,6}", text) and all(c in options for c in text) and len(set(text)) > 1:
        return _Read(None, f"{where}: several letters ({', '.join(sorted(set(text)))})", True)

    if _SEVERAL_WORDS.match(text):
        return _Read(None, f"{where}: names several options or none ({text[:40]!r})", True)

    punct = _LETTER_PUNCT_TEXT.match(text)
    if punct:
        return _letter_with_text(punct.group(1), punct.group(2), options, where, prose, strong=True)

    comma = _LETTER_COMMA_TEXT.match(text) if prose else None
    if comma:
        letter, rest = comma.group(1), comma.group(2)
        other = re.match(r"^[(\[]?([A-Z])[)\]]?(?![A-Za-z0-9'])", rest)
        if other and other.group(1) != letter:  # "B, C are both right"
            return _Read(None, f"{where}: several letters ({letter}, {other.group(1)})", True)
        if not _prefix_match(norm, options):
            return _letter_verdict(letter, options, f"{where}: letter {letter}")

    # An option text may itself start with another option's letter ("B cells" as option A): text first.
    prefix = _prefix_match(norm, options) if prose else []
    if prose and not prefix and _ARTICLE.match(norm):
        prefix = _prefix_match(_ARTICLE.sub("", norm, count=1), options)  # "the answer is a cobra"
    if len(prefix) == 1:
        return _Read(prefix[0], f"{where}: begins with the text of option {prefix[0]}", True)
    if len(prefix) > 1:
        return _Read(None, f"{where}: text matches several options ({', '.join(prefix)})", True)

    spaced = _LETTER_SPACE_TEXT.match(text)
    if spaced:
        letter, rest = spaced.group(1), spaced.group(2)
        is_word = letter in "AI" and rest[:1].islower() and not _LABEL_VERBS.match(rest)
        if not is_word:
            return _letter_with_text(letter, rest, options, where, prose, strong=False)

    if prose:
        explicit = {(m.group(1) or m.group(2)).upper() for m in _EXPLICIT_LETTER.finditer(text)}
        if len(explicit) > 1:
            return _Read(None, f"{where}: several letters ({', '.join(sorted(explicit))})", True)
        if len(explicit) == 1:
            letter = explicit.pop()
            return _letter_verdict(letter, options, f"{where}: names option {letter}")
        return _Read(None, f"{where}: names no option ({text[:60]!r})", False)
    return _Read(None, f"{where}: text matches no option ({text[:60]!r})", True)


def _letter_with_text(
    letter: str, rest: str, options: Mapping[str, str], where: str, prose: bool, *, strong: bool
) -> _Read:
    """``C. Cobra`` / ``C Cobra``: the letter, checked against the text that follows it."""
    up = letter.upper()
    rest_norm = _norm(rest)
    # "A, C" style lists with trailing words ("A or C are possible") are several letters.
    more = re.match(r"^(?:,|/|&|\+|and\b|or\b)\s*[(\[]?([A-Za-z])[)\]]?(?![A-Za-z])", rest.strip(), re.I)
    if more and more.group(1).upper() != up:
        return _Read(None, f"{where}: several letters ({up}, {more.group(1).upper()})", True)
    if up not in options:
        return _Read(None, f"{where}: letter {up} is not an option ({_span(options)})", True)
    own = _norm(options[up])
    others = [lab for lab in _text_matches(rest_norm, options) if lab != up]
    if own and (rest_norm == own or (prose and _prefix_match(rest_norm, {up: options[up]}))):
        return _Read(up, f"{where}: letter {up} with its option text", True)
    if others:
        return _Read(None, f"{where}: letter {up} but the text of option {others[0]}", True)
    if not strong and not prose:
        return _Read(None, f"{where}: text matches no option ({(letter + ' ' + rest)[:60]!r})", True)
    if not strong and up in "AI" and rest[:1].islower() and not _LABEL_VERBS.match(rest):
        return _Read(None, f"{where}: names no option", False)
    return _Read(up, f"{where}: letter {up}", True)


# ------------------------------------------------------------------------------------------ strict extract
_PHRASE = re.compile(
    r"(?:\b(?:final\s+answer|correct\s+answer|best\s+answer|right\s+answer|answer)(?:\s+(?:choice|option))?"
    r"|\b(?:correct|best|right)\s+(?:option|choice|response))"
    r"[\s*_]*(?:(?:is|would\s+be|should\s+be|will\s+be|must\s+be|=)\b|:|=)[\s*_:]*",
    re.I,
)


# Chat-template tokens that may reach the text when special tokens are not skipped.
_END_OF_TURN = re.compile(r"<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|<\|end\|>|</s>")
_CHAT_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>")


def extract_answer(response: str | None, options: Mapping[str, str], *, mode: Mode = "strict") -> Extraction:
    """The option a response chose (``label``) or ``None`` with the reason it is INVALID.

    ``options`` maps labels (A, B, ...) to option texts. ``mode="m1"`` is the HuatuoGPT-o1 / m1 evaluation
    matcher (always picks an option; for comparison with the papers only)."""
    opts = _check_options(options)
    if mode == "m1":
        match = m1_match(response or "", opts)
        return Extraction(match.last, f"m1 matcher ({match.kind})", None, match.first)
    if mode != "strict":
        raise ValueError(f"unknown answer mode {mode!r}; known: strict, m1")
    if response is None or not response.strip():
        return Extraction(None, "empty response")
    reasoning, answer = strip_think(response)
    if answer is None:
        return Extraction(None, "the reasoning never ends (no </think> or answer marker): no answer")
    answer = _END_OF_TURN.split(answer, maxsplit=1)[0]  # what follows the end of the turn is not the answer
    answer = _CHAT_TOKEN.sub("\n", answer)
    if not answer.strip():
        return Extraction(None, "nothing after the reasoning")
    result = _extract(answer, opts)
    return Extraction(result[0], result[1], result[2], result[0])


def _extract(answer: str, options: Mapping[str, str]) -> tuple[str | None, str, str | None]:
    for kind in ("boxed", "fbox"):
        boxes = _boxes(answer, kind)
        if not boxes:
            continue
        where = f"last \\{kind}{{}}" + (f" (of {len(boxes)})" if len(boxes) > 1 else "")
        content = boxes[-1]
        if content is None:
            return None, f"\\{kind}{{ never closes", None
        read = _read_candidate(content, options, prose=False, where=where)
        if read.label is None and "=" in content:
            after = content.rsplit("=", 1)[1]
            alt = _read_candidate(after, options, prose=False, where=where + " after '='")
            if alt.label is not None:
                return alt.label, alt.reason, after
        if read.label is None and not content.strip(_EDGE_PUNCT + " "):
            return None, f"empty {where}", content
        return read.label, read.reason, content

    last_read: _Read | None = None
    for match in reversed(list(_PHRASE.finditer(answer))):
        line = answer[match.end() :].split("\n", 1)[0]
        phrase = _SPACE.sub(" ", match.group(0)).strip(" *_:").lower()
        read = _read_candidate(line, options, prose=True, where=f"'{phrase}'")
        if read.definitive:
            return read.label, read.reason, line
        last_read = last_read or read

    whole = answer.strip()
    read = _read_candidate(whole, options, prose=False, where="whole answer")
    if read.label is not None:
        return read.label, read.reason, whole
    lines = [line for line in whole.splitlines() if line.strip()]
    if len(lines) > 1:
        tail = _read_candidate(lines[-1], options, prose=False, where="last line")
        if tail.label is not None or "several" in tail.reason or "not an option" in tail.reason:
            return tail.label, tail.reason, lines[-1]
    if len(lines) <= 1 and last_read is None:
        return None, read.reason, whole
    if last_read is not None:
        return None, f"no answer found ({last_read.reason})", None
    return (
        None,
        "no answer found: no \\boxed{}, no 'answer is'/'Answer:' phrase, no bare letter or option text",
        None,
    )


def judge(
    response: str | None, options: Mapping[str, str], answer_label: str, *, mode: Mode = "strict"
) -> Outcome:
    """'correct' / 'wrong' / 'invalid' of one response against the key letter ``answer_label``."""
    extracted = extract_answer(response, options, mode=mode)
    if extracted.label is None:
        return "invalid"
    return "correct" if extracted.label == answer_label.upper() else "wrong"


# -------------------------------------------------------------------------------------------- m1 compatible
@dataclass(frozen=True)
class M1Match:
    first: str
    last: str
    kind: str  # 'answer is' | 'letter' | 'option text' | 'similarity'


_M1_HEADERS = (M1_ANSWER_MARKER, THINK_CLOSE, "Answer:", "## Final Response\n\n")
_CJK = "\u4e00-\u9fff"


def m1_match(response: str, options: Mapping[str, str]) -> M1Match:
    """The HuatuoGPT-o1 / m1 evaluation matcher (see the module docstring). Always returns an option."""
    opts = _check_options(options)
    labels = list(opts)
    text = response
    for header in _M1_HEADERS:
        if header in text:
            text = text.split(header)[-1]

    strict = [m.group(1) for m in re.finditer(r"answer is\s*?([A-N])", text, re.S)]
    if strict:
        return M1Match(strict[0], strict[-1], "answer is")

    allowed = "ABCDEFGHIJKLMN"[: len(opts)]
    # Each hit consumes the character before and after the letter (as the original does), so "A,B" finds only A.
    loose = re.compile(
        rf"(?:[{_CJK}]|is |是|项|\*|\W|\(|为|^|'|\"|#)(?![aA] )([{allowed}])(?:\W|[{_CJK}]|$)", re.S
    )
    hits = [m.group(1) for m in loose.finditer(text)]
    if hits:
        return M1Match(hits[0], hits[-1], "letter")

    lower = text.lower()
    present = [label for label in labels if opts[label].lower() in lower]
    if present:
        last = max(present, key=lambda label: lower.rindex(opts[label].lower()))
        first = max(present, key=lambda label: lower.index(opts[label].lower()))
        return M1Match(first, last, "option text")

    best, best_ratio = labels[0], -1.0
    for label in labels:
        ratio = difflib.SequenceMatcher(None, opts[label].lower(), lower).ratio()
        if ratio >= best_ratio:  # ties go to the later option
            best, best_ratio = label, ratio
    return M1Match(best, best, "similarity")


def m1_accuracy(matches: Sequence[M1Match], keys: Iterable[str]) -> float:
    """The original's benchmark score: max(accuracy of the first answers, accuracy of the last answers)."""
    keys = [k.upper() for k in keys]
    if len(keys) != len(matches):
        raise ValueError(f"{len(matches)} matches but {len(keys)} keys")
    if not keys:
        return 0.0
    head = sum(m.first == k for m, k in zip(matches, keys, strict=True)) / len(keys)
    tail = sum(m.last == k for m, k in zip(matches, keys, strict=True)) / len(keys)
    return max(head, tail)
