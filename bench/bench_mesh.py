"""Benchmark: MeSH XML parse (streaming vs whole-file lxml) and the offline classifier on a 196K pool.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_mesh.py [--records 30000] [--pool 196157] [--workdir /tmp/m1-bench-mesh]

1. parse: a descriptor file in NLM's exact structure (curation.mesh.synth_xml) with the real file's shape
   (~30K records, ~300 MB) plus a qualifier file are parsed, each way in a fresh process:
   - stream:   curation.mesh.tables.parse_mesh (iterparse, cleared records) -> the three Parquet tables
               (sha256 of both files included), and its parsing alone (iter_descriptors, no output);
   - baseline: lxml.etree.parse of the whole file, then the same per-record extraction (the tree is kept, as
               a naive parser would).
   Wall time, records per second and the process's peak RSS (ru_maxrss) for each, and the ratios.
   Goal: < 60 s and < 1 GiB for the stream.
2. classify: the offline classifier (vocabulary load, automaton build, then every prompt) on a synthetic pool in
   the m1 mix (curation.devtools.synth rows rendered as m1 prompts), against a named baseline measured in the
   same run: a single compiled regex alternation of every cue phrase over the same prompts (what a naive
   cue-only classifier costs, without any descriptor matching).

Prints a table and one JSON line. Files go to --workdir (deleted afterwards unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_PARSE_STREAM = """
import json, resource, sys, time
from curation.mesh.tables import parse_mesh
t = time.perf_counter()
m = parse_mesh(sys.argv[1], sys.argv[2], sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t, "records": m["counts"]["mesh_descriptors"],
                  "terms": m["counts"]["mesh_entry_terms"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_PARSE_ONLY = """
import json, resource, sys, time
from curation.mesh.xml import iter_descriptors
t = time.perf_counter()
n = terms = 0
for d in iter_descriptors(sys.argv[1]):
    n += 1
    terms += len(d.terms)
print(json.dumps({"seconds": time.perf_counter() - t, "records": n, "terms": terms,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_PARSE_BASELINE = """
import json, resource, sys, time
from lxml import etree
from curation.mesh.xml import _text, _texts, _scope_note
t = time.perf_counter()
tree = etree.parse(sys.argv[1], etree.XMLParser(load_dtd=False, no_network=True, resolve_entities=False, huge_tree=True))
n = terms = 0
for rec in tree.getroot().iterfind("DescriptorRecord"):
    ui, name = _text(rec, "DescriptorUI"), _text(rec, "DescriptorName/String")
    trees = _texts(rec, "TreeNumberList/TreeNumber")
    note = _scope_note(rec)
    quals = _texts(rec, "AllowableQualifiersList/AllowableQualifier/QualifierReferredTo/QualifierUI")
    terms += len(_texts(rec, "ConceptList/Concept/TermList/Term/String"))
    n += 1
print(json.dumps({"seconds": time.perf_counter() - t, "records": n, "terms": terms,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_parse(workdir: Path, records: int) -> dict[str, Any]:
    from curation.mesh.synth_xml import (
        synthetic_descriptors,
        synthetic_qualifiers,
        write_descriptor_file,
        write_qualifier_file,
    )

    desc = workdir / "desc2025.xml"
    qual = workdir / "qual2025.xml"
    t = time.perf_counter()
    write_descriptor_file(desc, synthetic_descriptors(records))
    write_qualifier_file(qual, synthetic_qualifiers())
    size_mb = desc.stat().st_size / 1e6
    print(
        f"parse: wrote {records:,} descriptors, {size_mb:,.0f} MB in {time.perf_counter() - t:.1f} s",
        file=sys.stderr,
    )
    stream = run_child(_PARSE_STREAM, str(desc), str(qual), str(workdir / "mesh"))
    parse_only = run_child(_PARSE_ONLY, str(desc))
    baseline = run_child(_PARSE_BASELINE, str(desc))
    assert stream["records"] == parse_only["records"] == baseline["records"] == records, (stream, baseline)
    assert stream["terms"] == parse_only["terms"] == baseline["terms"], (stream, baseline)
    for r in (stream, parse_only, baseline):
        r["records_per_s"] = r["records"] / r["seconds"]
    return {
        "file_mb": round(size_mb, 1),
        "records": records,
        "stream": stream,
        "stream_parse_only": parse_only,
        "baseline_lxml_parse_whole_file": baseline,
        "speed_ratio": stream["records_per_s"] / baseline["records_per_s"],
        "parse_only_speed_ratio": parse_only["records_per_s"] / baseline["records_per_s"],
        "memory_ratio": stream["peak_rss_mib"] / baseline["peak_rss_mib"],
    }


def pool_prompts(n: int, seed: int = 0) -> list[str]:
    """Prompts in the m1 mix, rendered as m1 renders them (question, then 'X. text' lines)."""
    from curation.devtools.synth import MIXED_SHARES, headqa_row, medmcqa_row, medqa_row, pubmedqa_row

    rng = random.Random(seed)
    total = sum(MIXED_SHARES.values())
    plan = {f: n * s // total for f, s in MIXED_SHARES.items()}
    plan["medmcqa"] += n - sum(plan.values())
    prompts = []
    for _ in range(plan["medqa"]):
        r = medqa_row(rng)
        prompts.append(r["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in r["options"].items()))
    for i in range(plan["medmcqa"]):
        r = medmcqa_row(rng, f"id{i}")
        prompts.append(
            r["question"]
            + "\n"
            + "\n".join(f"{k}. {r[o]}" for k, o in zip("ABCD", ("opa", "opb", "opc", "opd"), strict=True))
        )
    for i in range(plan["headqa"]):
        r = headqa_row(rng, i)
        prompts.append(
            r["qtext"] + "\n" + "\n".join(f"{'ABCDE'[j]}. {a['atext']}" for j, a in enumerate(r["answers"]))
        )
    for i in range(plan["pubmedqa"]):
        r = pubmedqa_row(rng, i)
        prompts.append(
            "\n".join(r["context"]["contexts"]) + "\n" + r["question"] + "\nA. yes\nB. no\nC. maybe"
        )
    return prompts


def bench_classify(n: int) -> dict[str, Any]:
    import re

    from curation.mesh.matcher import MeshMatcher, split_stem
    from curation.mesh.vocab import load_offline
    from curation.rules.mesh_cues import CUES

    t = time.perf_counter()
    prompts = pool_prompts(n)
    print(f"classify: built {len(prompts):,} prompts in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    chars = sum(map(len, prompts)) / len(prompts)

    t = time.perf_counter()
    vocab = load_offline()
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    matcher = MeshMatcher(vocab)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    cols = matcher.classify_many(prompts)
    classify_s = time.perf_counter() - t

    # baseline: one regex alternation of every cue phrase (longest first), last match in the stem decides
    pattern = re.compile(
        r"\b(" + "|".join(sorted((re.escape(c.phrase) for c in CUES), key=len, reverse=True)) + r")\b",
        re.IGNORECASE,
    )
    t = time.perf_counter()
    for p in prompts:
        pattern.findall(split_stem(p)[0])
    regex_s = time.perf_counter() - t

    rules = {k: cols["rule"].count(k) for k in ("cue", "category", "default")}
    return {
        "prompts": len(prompts),
        "mean_chars": round(chars),
        "vocabulary_load_s": round(load_s, 2),
        "automaton_build_s": round(build_s, 2),
        "classify_s": round(classify_s, 2),
        "questions_per_s": round(len(prompts) / classify_s),
        "total_s": round(load_s + build_s + classify_s, 2),
        "baseline_cue_regex_s": round(regex_s, 2),
        "ratio_vs_cue_regex": round(classify_s / regex_s, 2),
        "rules": rules,
        "mean_descriptors": round(sum(map(len, cols["descriptors"])) / len(prompts), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--records", type=int, default=30_000, help="descriptors in the generated file (real: ~30K)"
    )
    ap.add_argument(
        "--pool", type=int, default=196_157, help="prompts for the offline classifier (m1 pool: 196,157)"
    )
    ap.add_argument("--workdir", default="/tmp/m1-bench-mesh")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skip-parse", action="store_true")
    ap.add_argument("--skip-classify", action="store_true")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"bench": "mesh", "cpus": os.cpu_count()}
    try:
        if not args.skip_parse:
            p = result["parse"] = bench_parse(workdir, args.records)
            s, o, b = p["stream"], p["stream_parse_only"], p["baseline_lxml_parse_whole_file"]
            print(f"\nMeSH descriptor parse: {p['records']:,} records, {p['file_mb']:,.0f} MB")
            print(f"{'':<34}{'seconds':>10}{'records/s':>12}{'peak RSS MiB':>15}")
            for label, r in (
                ("stream: parse_mesh -> 3 tables", s),
                ("  of which parsing (no output)", o),
                ("baseline: lxml.etree.parse whole", b),
            ):
                print(
                    f"{label:<34}{r['seconds']:>10.1f}{r['records_per_s']:>12,.0f}{r['peak_rss_mib']:>15,.0f}"
                )
            print(
                f"ratio stream/baseline: speed {p['speed_ratio']:.2f}x (parsing alone "
                f"{p['parse_only_speed_ratio']:.2f}x), peak memory {p['memory_ratio']:.3f}x"
            )
        if not args.skip_classify:
            c = result["classify"] = bench_classify(args.pool)
            print(f"\noffline classifier: {c['prompts']:,} prompts (mean {c['mean_chars']} chars)")
            print(
                f"  vocabulary load {c['vocabulary_load_s']} s, automaton build {c['automaton_build_s']} s, "
                f"classify {c['classify_s']} s ({c['questions_per_s']:,} questions/s); total {c['total_s']} s"
            )
            print(
                f"  baseline (one cue regex, no descriptors): {c['baseline_cue_regex_s']} s; "
                f"ratio {c['ratio_vs_cue_regex']}x; rules {c['rules']}"
            )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
