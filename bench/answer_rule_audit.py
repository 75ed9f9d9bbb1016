"""How many answer decisions a change to ``curation.answers`` moves, over every question the repository ships.

Reads every question of the test fixtures, the demo's sample pool and a synthetic ``mixed`` pool, renders the
answer forms scorers, the teacher and evaluation actually produce for each option (``\\boxed{C}``, the option
text boxed, "The answer is C.", "Answer: C. text", a bare last line ...) and extracts each with the module at
``--base`` (a git revision) and with the working tree's. Prints the counts, the questions whose option texts
are themselves labels, digits or numerals, and every changed decision (up to ``--show``).

    python bench/answer_rule_audit.py --base 6efd3c7 --synth-rows 20000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation import answers as current  # noqa: E402
from curation.devtools.synth import generate_pool  # noqa: E402
from curation.formats import Candidate, get_parser  # noqa: E402
from curation.readers import plan_source, read_chunk  # noqa: E402

FIXTURE_FILES = [
    ("medqa", "tests/fixtures/medqa.jsonl"),
    ("medmcqa", "tests/fixtures/medmcqa.csv"),
    ("medmcqa", "tests/fixtures/medmcqa.parquet"),
    ("headqa", "tests/fixtures/headqa.json"),
    ("pubmedqa", "tests/fixtures/pubmedqa.jsonl"),
    ("medqa", "curation/sample_pool/medqa.jsonl"),
    ("medqa", "curation/sample_pool/eval_medqa_test.jsonl"),
    ("medmcqa", "curation/sample_pool/medmcqa.parquet"),
    ("headqa", "curation/sample_pool/headqa.json"),
    ("pubmedqa", "curation/sample_pool/pubmedqa.jsonl"),
    ("jsonl", "tests/fixtures/eval/medbullets_op4.jsonl"),
]


def load_base(rev: str) -> object:
    """``curation/answers.py`` as it was at ``rev``, imported as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:curation/answers.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "answers_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("answers_base", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["answers_base"] = module
    spec.loader.exec_module(module)
    return module


def questions(files: list[tuple[str, str]]) -> Iterator[tuple[str, dict[str, str]]]:
    """(``file:row``, options) of every parseable question in ``files`` (``jsonl``: an evaluation file)."""
    for fmt, path in files:
        if fmt == "jsonl":
            for n, line in enumerate((ROOT / path).read_text().splitlines()):
                yield f"{path}:{n + 1}", json.loads(line)["options"]
            continue
        parser = get_parser(fmt)
        for spec in plan_source(fmt, str(ROOT / path) if not Path(path).is_absolute() else path, 10_000):
            for record in read_chunk(spec):
                if not isinstance(record.row, dict):
                    continue
                parsed = parser(record.row)
                if isinstance(parsed, Candidate):
                    yield record.ref, dict(parsed.options)


def responses(options: dict[str, str]) -> Iterator[str]:
    for label, text in options.items():
        yield f"\\boxed{{{label}}}"
        yield f"**Answer:** \\boxed{{{text}}}"
        yield f"The answer is {label}."
        yield f"Final Answer: {label}. {text}"
        yield f"Answer: {text}"
        yield f"Reasoning first.\n\n{label}"
        yield f"({label}) {text}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="HEAD", help="git revision whose curation/answers.py is the baseline")
    ap.add_argument(
        "--synth-rows", type=int, default=20_000, help="rows of the synthetic mixed pool (0: none)"
    )
    ap.add_argument("--show", type=int, default=20, help="changed decisions to print")
    args = ap.parse_args()

    base = load_base(args.base)
    files = list(FIXTURE_FILES)
    if args.synth_rows:
        synth_dir = Path(tempfile.mkdtemp())
        info = generate_pool(synth_dir, args.synth_rows, format="mixed", seed=0)
        files += [(name.split(".")[0], str(synth_dir / name)) for name in info["files"]]

    counts: Counter[str] = Counter()
    changed: list[str] = []
    for ref, options in questions(files):
        counts["questions"] += 1
        if any(text.strip().upper() in options for text in options.values()):
            counts["questions whose option texts are labels"] += 1
        for response in responses(options):
            counts["decisions"] += 1
            old = base.extract_answer(response, options).label  # type: ignore[attr-defined]
            new = current.extract_answer(response, options).label
            if old != new:
                counts["changed"] += 1
                if len(changed) < args.show:
                    changed.append(f"  {ref}: {response!r}: {old} -> {new}")
    corpus_changed = 0
    sys.path.insert(0, str(ROOT / "tests"))
    from answer_corpus import CASES, OPTION_SETS

    for case_id, response, option_set, _expected, _reason in CASES:
        old = base.extract_answer(response, OPTION_SETS[option_set]).label  # type: ignore[attr-defined]
        new = current.extract_answer(response, OPTION_SETS[option_set]).label
        if old != new:
            corpus_changed += 1
            changed.append(f"  corpus {case_id}: {response!r}: {old} -> {new}")
    print(f"base {args.base} vs working tree, {len(files)} files")
    counts.setdefault("questions whose option texts are labels", 0)
    print(f"answer corpus (tests/answer_corpus.py): {len(CASES)} cases, {corpus_changed} changed")
    for key, value in counts.items():
        print(f"{key}: {value:,}")
    print("\n".join(changed[: args.show + corpus_changed]) or "no decision changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
