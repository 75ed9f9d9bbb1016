"""MeSH classification rules: codes, the offline classifier's cue phrases and fallbacks, and the LLM's prompt/parse.

Everything here is a plain function over plain values so a reviewer can check it against m1 and test it
directly. The Aho-Corasick matching that feeds these rules lives in :mod:`curation.mesh.matcher`.

Codes (m1): the MeSH qualifiers (subheadings; 76 in current MeSH) sorted alphabetically by name get the
two-digit codes '00', '01', ... ('abnormalities' is 00, 'virology' is 75).

The offline rule, in order (:func:`decide`); the stem is the prompt before its option lines, and the
question is the stem's last sentence (:func:`split_question`):

1. **cue**: a cue phrase in the question names the qualifier ("most likely diagnosis" -> diagnosis,
   "mechanism of action" -> pharmacology, "next best step in management" -> therapy ...; :data:`CUES`).
   Intent phrases (priority 2) beat topical words (priority 1); among equals the last one wins.
2. **category**: the top-level MeSH categories of the descriptors found in the whole prompt (stem and options),
   if any is a content category (:data:`CONTENT_CATEGORIES`: Diseases, Chemicals and Drugs, Organisms,
   Anatomy, Psychiatry and Psychology, Phenomena and Processes): Diseases and Chemicals and Drugs together ->
   drug therapy, Diseases -> diagnosis, Chemicals and Drugs -> pharmacology, Anatomy -> anatomy & histology,
   Organisms -> microbiology ... (:data:`CATEGORY_QUALIFIER`). The most frequent category wins; ties go to
   :data:`CATEGORY_PRECEDENCE`.
3. **context**: a cue elsewhere in the stem (a vignette's history, a PubMedQA abstract), chosen as in 1.
   It ranks below the categories because such text mentions treatments and findings that are not what is asked.
4. **category** from the other categories (techniques, health care, ...), then
5. **default**: :data:`DEFAULT_QUALIFIER` (diagnosis, the commonest intent of clinical MCQs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# ---- MeSH tree categories ---------------------------------------------------------------------------
# The first letter of a tree number is the descriptor's top-level category (NLM's 16 trees).
CATEGORY_NAMES: dict[str, str] = {
    "A": "Anatomy",
    "B": "Organisms",
    "C": "Diseases",
    "D": "Chemicals and Drugs",
    "E": "Analytical, Diagnostic and Therapeutic Techniques, and Equipment",
    "F": "Psychiatry and Psychology",
    "G": "Phenomena and Processes",
    "H": "Disciplines and Occupations",
    "I": "Anthropology, Education, Sociology, and Social Phenomena",
    "J": "Technology, Industry, and Agriculture",
    "K": "Humanities",
    "L": "Information Science",
    "M": "Named Groups",
    "N": "Health Care",
    "V": "Publication Characteristics",
    "Z": "Geographicals",
}


def categories_of(tree_numbers: Iterable[str]) -> list[str]:
    """Distinct top-level categories (letters) of a descriptor's tree numbers, sorted: ['C', 'F']."""
    return sorted({t[0] for t in tree_numbers if t and t[0] in CATEGORY_NAMES})


# Without tree numbers (the offline vocabulary has none) a descriptor's category is inferred from its allowable
# qualifiers: NLM allows each qualifier only under certain trees, so a few qualifiers pin the category down
# (drug therapy: diseases; pharmacology: chemicals and drugs; pathogenicity: organisms ...). First rule wins.
# Descriptors that allow none of these (Humans, Time, check tags) get no category.
INFERENCE_RULES: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"drug therapy"}), "C"),
    (frozenset({"pharmacology", "therapeutic use"}), "D"),
    (frozenset({"pathogenicity"}), "B"),
    (frozenset({"anatomy & histology", "innervation", "blood supply"}), "A"),
    (frozenset({"methods", "instrumentation"}), "E"),
    (frozenset({"organization & administration", "legislation & jurisprudence"}), "N"),
    (frozenset({"physiology"}), "G"),
)


def infer_categories(allowable_qualifier_names: Iterable[str]) -> list[str]:
    """The category (one letter, or none) implied by a descriptor's allowable qualifiers (offline vocabulary)."""
    allowed = set(allowable_qualifier_names)
    for qualifiers, category in INFERENCE_RULES:
        if allowed & qualifiers:
            return [category]
    return []


# ---- qualifier codes ---------------------------------------------------------------------------------
def qualifier_codes(names: Iterable[str]) -> dict[str, str]:
    """name -> two-digit code, in alphabetical order of the names (m1's coding: 'abnormalities' -> '00')."""
    ordered = sorted(set(names))
    if len(ordered) > 100:
        raise ValueError(f"{len(ordered)} qualifiers do not fit two-digit codes")
    return {name: f"{i:02d}" for i, name in enumerate(ordered)}


# ---- text normalization ------------------------------------------------------------------------------
# normalize() works on UTF-8 bytes (bytes.translate is ~5x faster than str.translate or a regex, which matters at
# 196K questions): ASCII letters and digits are kept, every other ASCII byte becomes a separator, and non-ASCII
# bytes are kept as word characters, except the common punctuation below, which becomes a separator first.
_BYTE_TABLE = bytes(c if (48 <= c <= 57 or 97 <= c <= 122 or c >= 128) else 32 for c in range(256))
_UNICODE_SEPARATORS = tuple(
    ch.encode("utf-8")
    for ch in "\u2014\u2013\u2012\u2010\u2011\u00a0\u2009\u202f\u2018\u2019\u201c\u201d\u00b0\u00b1\u00d7\u00b7\u2026\u2022\u00ab\u00bb"
)


def normalize(text: str) -> str:
    """Lower-case words joined by two spaces, with a space at each end: ' type  2  diabetes '.

    Every key of the matchers is normalized the same way, so a key can only match whole words (it starts and
    ends with a space) and two adjacent words can both match (each owns one of the two spaces between them).
    Punctuation and hyphens become separators: 'Non-Small-Cell' matches 'non small cell'. The result is the
    UTF-8 bytes read as Latin-1 (one character per byte); keys and texts go through the same function, so a
    non-ASCII term ('Sjögren Syndrome') matches its own spelling.
    """
    data = text.lower().encode("utf-8")
    if not text.isascii():
        for sep in _UNICODE_SEPARATORS:
            if sep in data:
                data = data.replace(sep, b" ")
    return (b" " + b"  ".join(data.translate(_BYTE_TABLE).split()) + b" ").decode("latin-1")


def uninvert(name: str) -> str | None:
    """The natural word order of an inverted MeSH name: 'Leukemia, Myeloid, Acute' -> 'Acute Myeloid Leukemia'.

    MeSH writes many names inverted; its entry terms carry the natural forms, but the offline vocabulary has no
    entry terms, so this derived form stands in for them. None when the name is not inverted.
    """
    parts = [p.strip() for p in name.split(",")]
    if len(parts) < 2 or any(not p for p in parts):
        return None
    return " ".join(reversed(parts))


# Descriptor terms that are mostly ordinary English in question text ("leads to", "at this time"), never
# matched. Terms shorter than MIN_TERM_CHARS are skipped too (abbreviation clashes).
STOP_TERMS = frozenset(
    {"lead", "time", "role", "rest", "light", "face", "hand", "head", "back", "set", "play", "work", "walking",
     "reading", "writing", "sleep", "weight", "names", "ions", "running", "touch", "smell", "taste", "report",
     "cues", "form", "friends", "hope", "love", "mothers", "fathers", "students", "men", "women", "persons",
     "patients", "humans", "male", "female", "child", "adult", "aged", "infant"}
)  # fmt: skip
MIN_TERM_CHARS = 3


def usable_term(term: str) -> bool:
    """Whether a descriptor term goes into the matcher (not a stop term, long enough)."""
    t = term.strip().lower()
    return len(t) >= MIN_TERM_CHARS and t not in STOP_TERMS


# ---- cue phrases -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cue:
    phrase: str  # as written; matched normalized, on word boundaries
    qualifier: str  # a qualifier name
    priority: int  # 2: the question's intent ("most likely diagnosis"); 1: a topical word ("biopsy")


def _cues(qualifier: str, priority: int, *phrases: str) -> list[Cue]:
    return [Cue(p, qualifier, priority) for p in phrases]


CUES: tuple[Cue, ...] = tuple(
    # intent phrases: what the question asks for
    _cues("diagnosis", 2, "most likely diagnosis", "most probable diagnosis", "likely diagnosis",
          "probable diagnosis", "differential diagnosis", "what is the diagnosis", "diagnosis is",
          "confirm the diagnosis", "investigation of choice", "best initial test", "most appropriate test",
          "most sensitive test", "most specific test", "gold standard", "diagnostic test", "best test",
          "diagnosed by", "most likely to show", "most likely finding", "characteristic of", "consistent with",
          "suggestive of", "most likely has")
    + _cues("diagnostic imaging", 2, "imaging modality", "imaging of choice", "best imaging")
    + _cues("therapy", 2, "next best step in management", "next step in management", "best next step",
            "most appropriate next step", "next best step", "next step", "most appropriate management",
            "best management", "management of", "treatment of choice", "most appropriate treatment",
            "best treatment", "first line treatment", "initial management", "management is", "treated with",
            "treatment is")
    + _cues("drug therapy", 2, "drug of choice", "most appropriate pharmacotherapy", "first line drug",
            "most appropriate medication", "best drug", "pharmacotherapy", "drug is used", "drug used")
    + _cues("pharmacology", 2, "mechanism of action", "acts by", "drug class", "class of drug", "inhibits",
            "receptor", "antagonist", "agonist")
    + _cues("adverse effects", 2, "side effect", "side effects", "adverse effect", "adverse effects",
            "adverse reaction", "adverse event", "adverse events")
    + _cues("etiology", 2, "most likely cause", "most common cause", "most likely etiology", "etiology",
            "aetiology", "caused by", "causative agent", "risk factor for")
    + _cues("physiopathology", 2, "pathophysiology", "underlying mechanism", "pathogenesis",
            "most likely mechanism", "mechanism of")
    + _cues("microbiology", 2, "causative organism", "most likely organism", "most likely pathogen",
            "organism is", "organism responsible")
    + _cues("genetics", 2, "mode of inheritance", "inheritance pattern", "inherited", "mutation", "gene",
            "genetic", "chromosome", "karyotype")
    + _cues("complications", 2, "most likely complication", "complication", "complications", "sequela")
    + _cues("prevention & control", 2, "prevent", "prevention", "prophylaxis", "vaccine", "vaccination",
            "screening")
    + _cues("epidemiology", 2, "incidence", "prevalence", "risk factors")
    + _cues("statistics & numerical data", 2, "sensitivity", "specificity", "predictive value",
            "odds ratio", "relative risk", "number needed to treat", "confidence interval", "p value")
    + _cues("innervation", 2, "nerve supply", "innervated by", "innervation", "supplied by the nerve")
    + _cues("blood supply", 2, "blood supply", "arterial supply", "venous drainage", "supplied by")
    + _cues("embryology", 2, "develops from", "derived from", "embryologic", "embryological", "embryology",
            "pharyngeal arch", "pharyngeal pouch")
    + _cues("pharmacokinetics", 2, "half life", "bioavailability", "volume of distribution", "first pass",
            "clearance", "metabolized by", "excreted")
    + _cues("poisoning", 2, "poisoning", "overdose", "antidote")
    + _cues("toxicity", 2, "toxicity", "toxic effect")
    + _cues("mortality", 2, "prognosis", "mortality", "survival", "cause of death")
    + _cues("ethics", 2, "ethical", "informed consent", "confidentiality", "autonomy")
    + _cues("psychology", 2, "defense mechanism", "defence mechanism")
    + _cues("surgery", 2, "surgical management", "procedure of choice", "operation of choice")
    + _cues("classification", 2, "classification", "classified as", "staging")
    + _cues("transmission", 2, "transmitted", "mode of transmission", "transmission")
    + _cues("rehabilitation", 2, "rehabilitation")
    + _cues("secondary", 2, "metastasis", "metastases", "metastasize", "metastatic")
    # topical words: the subject of the question when no intent phrase says more
    + _cues("pathology", 1, "biopsy", "histology", "histopathology", "histological", "microscopy",
            "microscopic", "gross specimen", "autopsy")
    + _cues("diagnostic imaging", 1, "x ray", "radiograph", "ct scan", "mri", "ultrasound", "ultrasonography",
            "angiography")
    + _cues("surgery", 1, "surgery", "surgical", "operation", "resection", "excision")
    + _cues("anatomy & histology", 1, "anatomy", "anatomical", "epithelium", "lined by", "ligament",
            "muscle", "bone")
    + _cues("physiology", 1, "physiology", "physiological", "secreted by", "normal value", "function of")
    + _cues("enzymology", 1, "enzyme", "enzymes")
    + _cues("metabolism", 1, "metabolism", "metabolic pathway", "rate limiting")
    + _cues("deficiency", 1, "deficiency")
    + _cues("congenital", 1, "congenital")
    + _cues("immunology", 1, "antibody", "antibodies", "immunoglobulin", "hypersensitivity", "immune")
    + _cues("virology", 1, "virus", "viral")
    + _cues("parasitology", 1, "parasite", "parasitic", "helminth", "protozoa")
    + _cues("microbiology", 1, "bacteria", "bacterial", "bacterium", "organism", "gram stain", "culture")
    + _cues("radiotherapy", 1, "radiotherapy", "radiation therapy")
    + _cues("diet therapy", 1, "diet", "dietary")
    + _cues("injuries", 1, "injury", "trauma", "fracture")
    + _cues("cerebrospinal fluid", 1, "csf", "cerebrospinal fluid")
    + _cues("nursing", 1, "nurse", "nursing")
    + _cues("legislation & jurisprudence", 1, "law", "legal", "legally")
    + _cues("economics", 1, "cost", "costs")
    + _cues("chemically induced", 1, "drug induced", "induced by")
    + _cues("standards", 1, "guideline", "guidelines")
    + _cues("history", 1, "first described", "discovered by")
    + _cues("ultrastructure", 1, "electron microscopy")
)  # fmt: skip

# No cue in the question: the descriptors' categories decide. A question naming a disease and a drug is about
# treating it.
CATEGORY_PAIR_QUALIFIER: dict[frozenset[str], str] = {frozenset({"C", "D"}): "drug therapy"}
CATEGORY_QUALIFIER: dict[str, str] = {
    "C": "diagnosis",
    "D": "pharmacology",
    "A": "anatomy & histology",
    "B": "microbiology",
    "G": "physiology",
    "F": "psychology",
    "E": "methods",
    "N": "organization & administration",
    "H": "education",
    "I": "education",
    "J": "instrumentation",
    "K": "history",
    "L": "statistics & numerical data",
    "Z": "epidemiology",
}
CONTENT_CATEGORIES = frozenset("CDBAFG")
CATEGORY_PRECEDENCE = "CDBAGFENHIJKLZ"  # ties between equally frequent categories
DEFAULT_QUALIFIER = "diagnosis"

_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=\S)|\n+")


def split_question(stem: str) -> tuple[str, str]:
    """(context, question) of a stem: the question is its last sentence or line ('The diagnosis is:' too)."""
    stem = stem.rstrip()
    parts = _SENTENCE_END.split(stem)
    question = parts[-1] if parts else ""
    return stem[: len(stem) - len(question)], question


@dataclass(frozen=True)
class Decision:
    qualifier: str
    rule: str  # cue | category | context | default
    cue: str | None  # the cue phrase, or the deciding category letters


_PRECEDENCE = {c: i for i, c in enumerate(CATEGORY_PRECEDENCE)}


def rank_categories(categories: Iterable[str]) -> list[str]:
    """Distinct categories, most frequent first, ties by CATEGORY_PRECEDENCE (then alphabetically)."""
    counts: dict[str, int] = {}
    for c in categories:
        counts[c] = counts.get(c, 0) + 1
    if len(counts) < 2:
        return list(counts)
    return sorted(counts, key=lambda c: (-counts[c], _PRECEDENCE.get(c, len(_PRECEDENCE)), c))


def _best(cues: Sequence[tuple[int, Cue]]) -> Cue:
    return max(cues, key=lambda pc: (pc[1].priority, pc[0]))[1]


def _by_category(ranked: Sequence[str], present: set[str], allowed: Iterable[str]) -> Decision | None:
    usable = [c for c in ranked if c in allowed and c in CATEGORY_QUALIFIER]
    if not usable:
        return None
    top = usable[0]
    for pair, qualifier in CATEGORY_PAIR_QUALIFIER.items():
        if top in pair and pair <= present:  # both present, and one of them leads
            return Decision(qualifier, "category", "+".join(sorted(pair)))
    return Decision(CATEGORY_QUALIFIER[top], "category", top)


def decide(
    question_cues: Sequence[tuple[int, Cue]],
    categories: Sequence[str],
    context_cues: Sequence[tuple[int, Cue]] = (),
    ranked: Sequence[str] | None = None,
) -> Decision:
    """The offline rule (module docstring). Cues are (position, cue) found in the question sentence and in the
    rest of the stem; ``categories`` has one letter per matched descriptor (``ranked``: their
    :func:`rank_categories`, when the caller has it)."""
    if question_cues:
        best = _best(question_cues)
        return Decision(best.qualifier, "cue", best.phrase)
    if ranked is None:
        ranked = rank_categories(categories)
    present = set(categories)
    decision = _by_category(ranked, present, CONTENT_CATEGORIES)
    if decision is not None:
        return decision
    if context_cues:
        best = _best(context_cues)
        return Decision(best.qualifier, "context", best.phrase)
    return _by_category(ranked, present, CATEGORY_QUALIFIER) or Decision(DEFAULT_QUALIFIER, "default", None)


# ---- the LLM classifier: prompt and answer parsing ---------------------------------------------------
PROMPT_HEAD = (
    "Classify the medical question below into exactly one of the {n} MeSH qualifiers (subheadings) listed "
    "after it, by the aspect of medicine the question is mainly about. Each qualifier is given as its "
    "two-digit code, its name and, where available, its scope note.\n\n"
    "First explain your choice in a few sentences. Then write the two-digit code alone on the final line."
)


def classification_prompt(question: str, qualifiers: Sequence[Mapping[str, str | None]]) -> str:
    """m1's classification request: the question, the coded qualifiers with scope notes, explanation first and
    the code on the final line. The question is quoted line by line ('> '), so nothing in it can pass for
    an instruction or for the answer format, and its option lines do not start a line."""
    quoted = "\n".join("> " + line for line in question.strip().splitlines())
    lines = []
    for q in qualifiers:
        note = (q.get("scope_note") or "").strip()
        lines.append(f"{q['code']} {q['name']}" + (f": {note}" if note else ""))
    return (
        PROMPT_HEAD.format(n=len(qualifiers))
        + "\n\nQuestion:\n"
        + quoted
        + "\n\nQualifiers:\n"
        + "\n".join(lines)
        + "\n\nExplain briefly, then give the code (00-{last}) alone on the last line.".format(
            last=f"{len(qualifiers) - 1:02d}"
        )
    )


REASK_PROMPT = (
    "Your answer did not end with a valid code: {why}. Reply again: one short sentence, then the two-digit "
    "code (00-{last}) of the single best qualifier alone on the last line."
)

_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)
_LINE_NOISE = re.compile(r"[*_`#>\[\]()\"'|]+")
_LABEL_RE = re.compile(r"^(?:final\s+)?(?:answer|code|category|qualifier|domain|label)\s*(?:code)?\s*[:=\-]?\s*",
                       re.IGNORECASE)  # fmt: skip
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER_RE = re.compile(r"(?<![\d.])(\d{1,3})(?![\d.]\d)")


def parse_code(text: str | None, names: Sequence[str]) -> tuple[str | None, str]:
    """The code on the answer's final line, tolerant of formatting: (code, how) or (None, why not).

    ``names`` are the qualifier names in code order. Accepted on the last non-empty line: '12', '**12**',
    'Code: 12', '12 - drug therapy', '\\boxed{12}', '[12].', or the exact qualifier name alone. A number out
    of range, two different numbers, or nothing usable is a failure with its reason (never a guess).
    """
    if text is None or not text.strip():
        return None, "empty answer"
    body = _THINK_RE.sub("", text)
    if "<think>" in body:  # unterminated reasoning: the model never reached an answer
        return None, "reasoning never closed (</think> missing)"
    lines = [ln.strip() for ln in body.strip().splitlines()]
    lines = [ln for ln in lines if _LINE_NOISE.sub("", ln).strip(" .:-")]
    if not lines:
        return None, "empty answer"
    last = lines[-1]
    boxed = _BOXED_RE.findall(last)
    line = boxed[-1] if boxed else last
    line = _LABEL_RE.sub("", _LINE_NOISE.sub(" ", line).strip()).strip(" .:-")
    numbers = {int(n) for n in _NUMBER_RE.findall(line)}
    n = len(names)
    if len(numbers) == 1:
        value = numbers.pop()
        if value >= n:
            return None, f"code {value} out of range 00-{n - 1:02d}"
        name = names[value]
        rest = line.lower().replace(f"{value:02d}", " ").replace(str(value), " ")
        named = [nm for nm in names if nm in rest]
        if named and name not in named and len(max(named, key=len)) > 3:
            return None, f"code {value:02d} ({name}) contradicts the name {max(named, key=len)!r} on the line"
        return f"{value:02d}", "final line"
    if len(numbers) > 1:
        return None, f"several numbers on the final line: {last[:80]!r}"
    lowered = line.lower().strip()
    if lowered in names:
        return f"{names.index(lowered):02d}", "qualifier name on the final line"
    return None, f"no code on the final line: {last[:80]!r}"
