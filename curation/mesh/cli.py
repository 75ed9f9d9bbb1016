"""`m1 mesh`: fetch and parse NLM's MeSH, show the qualifier codes, and try the offline classifier."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from curation.jobenv import nonempty_path
from curation.mesh.fetch import NLM_BASE, fetch_mesh
from curation.mesh.matcher import MeshMatcher
from curation.mesh.vocab import load_vocabulary


def _fetch(args: argparse.Namespace) -> int:

    desc, qual = fetch_mesh(args.year, args.dir, base_url=args.base_url or NLM_BASE, force=args.force)
    if args.no_parse:
        return 0
    return _parse_files(str(desc), str(qual), args.dir)


def _parse(args: argparse.Namespace) -> int:
    return _parse_files(args.descriptors, args.qualifiers, args.dir)


def _parse_files(desc: str, qual: str, out: str) -> int:
    # deferred: lxml loads only for `m1 mesh parse|fetch`
    from curation.mesh.tables import parse_mesh

    started = time.perf_counter()
    manifest = parse_mesh(desc, qual, out, progress=lambda n: print(f"  {n:,} descriptors ..."))
    counts = manifest["counts"]
    print(
        f"{out}: {counts['mesh_descriptors']:,} descriptors, {counts['mesh_entry_terms']:,} entry terms, "
        f"{counts['mesh_qualifiers']} qualifiers (MeSH {manifest['year']}) in {time.perf_counter() - started:.1f} s"
    )
    print(f"use it: set `classify: {{mesh_dir: {out}}}` in the config, or `m1 mesh show --dir {out}`")
    return 0


def _show(args: argparse.Namespace) -> int:

    vocab = load_vocabulary(args.dir)
    print(f"vocabulary: {vocab.label}")
    print(f"descriptors: {len(vocab.descriptor_uis):,}; match terms: {len(vocab.terms):,}")
    if vocab.lacks:
        print("lacks: " + "; ".join(vocab.lacks))
    print(
        f"\n{vocab.qualifiers.num_rows} qualifiers (code, id, name{', scope note' if not vocab.lacks else ''}):"
    )
    for q in vocab.qualifier_rows():
        note = f"  {q['scope_note'][:90]}" if q["scope_note"] and args.notes else ""
        print(f"  {q['code']}  {q['qualifier_ui']:<12} {q['name']}{note}")
    return 0


def _classify(args: argparse.Namespace) -> int:

    vocab = load_vocabulary(args.dir)
    matcher = MeshMatcher(vocab)
    text = args.text.replace("\\n", "\n")
    label = matcher.classify(text)
    out: dict[str, Any] = {
        "domain_code": label.code,
        "domain_name": label.name,
        "rule": label.decision.rule,
        "cue": label.decision.cue,
        "descriptors": [vocab.descriptor_names[i] for i in label.descriptor_idx],
        "categories": label.categories,
        "vocabulary": vocab.label,
    }
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "mesh", help="MeSH: fetch/parse NLM's XML, show qualifier codes, classify a question"
    )
    sub = p.add_subparsers(dest="mesh_command", required=True)

    f = sub.add_parser("fetch", help="download descYYYY.xml and qualYYYY.xml from NLM, then parse them")
    f.add_argument("--year", type=int, required=True, help="MeSH year, e.g. 2025")
    f.add_argument(
        "--dir", required=True, type=nonempty_path, help="folder for the XML files and the parsed tables"
    )
    f.add_argument("--base-url", default=None, help="a mirror of NLM's MeSH folder (default: NLM)")
    f.add_argument("--force", action="store_true", help="download again even if the files are there")
    f.add_argument("--no-parse", action="store_true", help="only download")
    f.set_defaults(func=_fetch)

    pa_ = sub.add_parser(
        "parse", help="parse local descYYYY.xml and qualYYYY.xml (.gz too) into Parquet tables"
    )
    pa_.add_argument("descriptors", help="descYYYY.xml")
    pa_.add_argument("qualifiers", help="qualYYYY.xml")
    pa_.add_argument(
        "--dir", required=True, help="output folder (mesh_descriptors/entry_terms/qualifiers.parquet)"
    )
    pa_.set_defaults(func=_parse)

    s = sub.add_parser(
        "show", help="the qualifiers with their two-digit codes, and what the vocabulary lacks"
    )
    s.add_argument("--dir", default=None, help="a parsed MeSH folder (default: the offline vocabulary)")
    s.add_argument("--notes", action="store_true", help="print the start of each scope note")
    s.set_defaults(func=_show)

    c = sub.add_parser("classify", help="the offline classifier on one question, with its evidence")
    c.add_argument("text", help="the question (options as lines 'A. ...'; '\\n' is read as a newline)")
    c.add_argument("--dir", default=None, help="a parsed MeSH folder (default: the offline vocabulary)")
    c.set_defaults(func=_classify)
    return p
