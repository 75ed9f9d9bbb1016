"""The offline classifier: Aho-Corasick over MeSH terms and cue phrases, then the rules of curation.rules.mesh_cues.

Two automata (pyahocorasick, leftmost-longest non-overlapping matches) run over the normalized text
(:func:`curation.rules.mesh_cues.normalize`: lower case, words joined by two spaces, so every key matches whole
words only):

* descriptors: every usable term of the vocabulary (names, entry terms, natural orders of inverted names)
  over the whole prompt, stem and options;
* cues: the cue phrases over the stem only (the text before the options block), since options such as
  'Surgery' say nothing about what is asked; the question sentence and the rest of the stem separately.

No model, no network: ~20-30 us per question on one core.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ahocorasick

from curation.mesh.vocab import Vocabulary, VocabularyError
from curation.rules.mesh_cues import (
    CATEGORY_NAMES,
    CUES,
    Decision,
    decide,
    normalize,
    rank_categories,
    split_question,
    usable_term,
)


def split_stem(prompt: str) -> tuple[str, str]:
    """(stem, options block) of an m1 prompt: the options are the lines from the last line starting 'A. '."""
    pos = prompt.rfind("\nA. ")
    if pos < 0:
        return (prompt, "") if not prompt.startswith("A. ") else ("", prompt)
    return prompt[:pos], prompt[pos + 1 :]


def _key(term: str) -> str:
    return normalize(term)


@dataclass(frozen=True)
class OfflineLabel:
    code: str
    name: str
    decision: Decision
    descriptor_idx: list[int]  # distinct descriptors, in order of first appearance
    categories: list[str]  # ranked


class MeshMatcher:
    """Built once per vocabulary (~0.3 s); :meth:`classify` one prompt, :meth:`classify_many` a batch."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.names = vocab.qualifier_names
        self._code = {n: f"{i:02d}" for i, n in enumerate(self.names)}
        unknown = sorted({c.qualifier for c in CUES} - set(self._code))
        if unknown:
            raise VocabularyError(
                f"{vocab.label}: the vocabulary lacks qualifiers the offline rules name: {', '.join(unknown)} "
                f"(it has {len(self.names)} qualifiers; MeSH has 76)"
            )
        self.descriptors = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        seen: set[str] = set()
        for idx, term in vocab.terms:  # names come first, so a shared term belongs to the named descriptor
            if not usable_term(term):
                continue
            key = _key(term)
            if key not in seen and key.strip():
                seen.add(key)
                self.descriptors.add_word(key, idx)
        self.descriptors.make_automaton()
        self.cues = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for i, cue in enumerate(CUES):
            key = _key(cue.phrase)
            if self.cues.exists(key):
                raise ValueError(f"cue phrase {cue.phrase!r} is listed twice")
            self.cues.add_word(key, i)
        self.cues.make_automaton()
        self.n_keys = len(seen)

    def classify(self, prompt: str) -> OfflineLabel:
        stem, options = split_stem(prompt)
        context, question = split_question(stem)
        norm_question, norm_context = normalize(question), normalize(context)
        question_cues = [(end, CUES[i]) for end, i in self.cues.iter_long(norm_question)]
        context_cues = [(end, CUES[i]) for end, i in self.cues.iter_long(norm_context)] if context else []
        seen: dict[int, None] = {}
        for text in (norm_context, norm_question, normalize(options) if options else ""):
            for _, idx in self.descriptors.iter_long(text):
                seen.setdefault(idx, None)
        cats = self.vocab.descriptor_categories
        votes = [c for idx in seen for c in cats[idx]]
        ranked = rank_categories(votes)
        decision = decide(question_cues, votes, context_cues, ranked)
        return OfflineLabel(
            code=self._code[decision.qualifier],
            name=decision.qualifier,
            decision=decision,
            descriptor_idx=list(seen),
            categories=ranked,
        )

    def classify_many(self, prompts: Sequence[str]) -> dict[str, list[Any]]:
        """Columns of the offline part of `labels` for ``prompts``."""
        uis, names = self.vocab.descriptor_uis, self.vocab.descriptor_names
        cols: dict[str, list[Any]] = {
            k: []
            for k in (
                "domain_code",
                "domain_name",
                "rule",
                "cue",
                "descriptors",
                "descriptor_uis",
                "categories",
                "category_names",
            )
        }
        for prompt in prompts:
            label = self.classify(prompt)
            cols["domain_code"].append(label.code)
            cols["domain_name"].append(label.name)
            cols["rule"].append(label.decision.rule)
            cols["cue"].append(label.decision.cue)
            cols["descriptors"].append([names[i] for i in label.descriptor_idx])
            cols["descriptor_uis"].append([uis[i] for i in label.descriptor_idx])
            cols["categories"].append(label.categories)
            cols["category_names"].append([CATEGORY_NAMES[c] for c in label.categories])
        return cols
