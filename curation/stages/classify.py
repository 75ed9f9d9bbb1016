"""Classify: every m23K question -> one of the 76 MeSH qualifiers (the `labels` table m1K's sampler draws on).

Two classifiers, one table:

* ``method: offline`` (the embedded default; no model, ~seconds for 196K questions): MeSH descriptor names
  and entry terms found in the question (Aho-Corasick on word boundaries) give top-level categories, and cue
  phrases of the question stem ("most likely diagnosis", "mechanism of action", ...) pick the qualifier; the
  rule is :mod:`curation.rules.mesh_cues`, the matcher :mod:`curation.mesh.matcher`.
* ``method: llm`` (the m1 preset): an LLM reads the question and the coded qualifiers (with scope notes when
  the vocabulary has them), explains, and writes the code on its own final line
  (:func:`curation.rules.mesh_cues.classification_prompt`). An answer without a parseable code is re-asked
  (the bad answer and what was wrong go back to the model) up to ``max_attempts`` asks in all; a question
  still without a code gets the offline label with ``error`` saying why (``fallback: offline``) or goes to
  ``rejects/classify`` (``fallback: reject``). Engine errors after the engine's own retries count as failed
  asks. Nothing crashes on a bad answer.

Every question gets the offline columns (matched descriptors, categories) either way. PubMedQA rows carry
their article's MeSH headings (`meshes`); they land in ``gold_meshes`` and the stage reports how many of them
the matcher found (recall) and how many found descriptors they confirm (precision).

Outputs: ``labels`` (one row per (source, qid) of ``m23k``), ``rejects/classify``, and ``mesh_qualifiers``
(the code table used, so a run says what its codes mean).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

import schemas
from curation.config import CurationConfig
from curation.engines import run_requests, running
from curation.engines.request import make_request, requests_table
from curation.errors import UserError
from curation.mesh.matcher import MeshMatcher
from curation.mesh.vocab import OFFLINE_PACKAGE, load_vocabulary
from curation.pipeline import Stage, StageContext, StageResult
from curation.rules.mesh_cues import REASK_PROMPT, classification_prompt, parse_code
from curation.stages.llm import attach, bounded_duckdb, engine_for

STAGE = "classify"
INPUT = "m23k"
KEY_SEP = "|"


class ClassifyInputError(UserError):
    """The run lacks what the classify stage reads."""


# ---- PubMedQA's gold MeSH headings ----------------------------------------------------------------------
def gold_meshes(metadata: str | None) -> list[str] | None:
    """PubMedQA's `meshes` (in the raw row's `context`, or at its top level), else None."""
    if not metadata or '"meshes"' not in metadata:
        return None
    try:
        row = json.loads(metadata)
    except ValueError:
        return None
    for holder in (row, row.get("context") if isinstance(row, dict) else None):
        if isinstance(holder, dict) and isinstance(holder.get("meshes"), list):
            return [str(m) for m in holder["meshes"]]
    return None


def mesh_agreement(
    found: list[list[str]], gold: list[list[str] | None], domains: list[str]
) -> dict[str, Any] | None:
    """Agreement of matched descriptors with PubMedQA's headings, over rows that have them.

    A gold heading 'Name/qualifier' counts its name as a descriptor and its qualifier as a domain.
    ``descriptor_recall``: share of gold descriptors the matcher found; ``descriptor_precision``: share of found
    descriptors that are gold; ``qualifier_agreement``: share of rows with gold qualifiers whose domain is one.
    """
    rows = gold_total = gold_found = found_total = found_gold = q_rows = q_hits = 0
    for names, heads, domain in zip(found, gold, domains, strict=True):
        if heads is None:
            continue
        rows += 1
        gold_names = {h.split("/", 1)[0].strip().lower() for h in heads}
        gold_quals = {q.strip().lower() for h in heads for q in h.split("/")[1:]}
        got = {n.lower() for n in names}
        gold_total += len(gold_names)
        gold_found += len(gold_names & got)
        found_total += len(got)
        found_gold += len(got & gold_names)
        if gold_quals:
            q_rows += 1
            q_hits += domain in gold_quals
    if rows == 0:
        return None
    return {
        "rows": rows,
        "descriptor_recall": round(gold_found / gold_total, 4) if gold_total else None,
        "descriptor_precision": round(found_gold / found_total, 4) if found_total else None,
        "rows_with_gold_qualifiers": q_rows,
        "qualifier_agreement": round(q_hits / q_rows, 4) if q_rows else None,
    }


# ---- the LLM rounds --------------------------------------------------------------------------------------
def ask_messages(
    prompt: str, qualifiers: list[dict[str, Any]], previous: tuple[str, str] | None
) -> list[dict[str, str]]:
    """The first ask, or a re-ask that shows the model its unusable answer and what was wrong with it."""
    messages = [{"role": "user", "content": classification_prompt(prompt, qualifiers)}]
    if previous is not None:
        raw, why = previous
        last = f"{len(qualifiers) - 1:02d}"
        messages += [
            {"role": "assistant", "content": raw},
            {"role": "user", "content": REASK_PROMPT.format(why=why, last=last)},
        ]
    return messages


class LLMState:
    """Per question: the last answer, why it failed, and the code once one parses."""

    __slots__ = ("attempts", "code", "error", "raw", "request_id")

    def __init__(self) -> None:
        self.attempts = 0
        self.code: str | None = None
        self.raw: str | None = None
        self.error: str | None = None
        self.request_id: str | None = None


def absorb_responses(responses: list[dict[str, Any]], states: dict[str, LLMState], names: list[str]) -> None:
    """Parse one round of responses (keyed source|qid|attempt) into ``states``."""
    for r in responses:
        key = r["key"].rsplit(KEY_SEP, 1)[0]
        state = states[key]
        state.attempts += 1
        state.request_id = r["request_id"]
        if r.get("error"):
            state.raw, state.error = r.get("text"), f"engine error: {r['error']}"
            continue
        state.raw = r.get("text")
        code, how = parse_code(state.raw, names)
        if code is None:
            if r.get("finish_reason") == "length":
                how = f"cut off at max_tokens (finish_reason length); {how}"
            state.error = f"unparseable: {how}"
        else:
            state.code, state.error = code, None


def _responses_of(ds: Any) -> list[dict[str, Any]]:
    import ray

    tables = ray.get(ds.to_arrow_refs())
    if not tables:
        return []
    return (
        pa.concat_tables(tables).select(["key", "request_id", "text", "error", "finish_reason"]).to_pylist()
    )


# ---- one run of the stage -------------------------------------------------------------------------------
@dataclass
class ClassifyRun:
    """What one run of the stage carries from batch to batch: the classifiers, and the counts and rejects."""

    opts: Any
    matcher: Any
    vocab_label: str
    qualifiers: list[dict[str, Any]]
    names: list[str]
    ledger_uri: str
    engine: Any = None
    model: str | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"rows_in": 0, "llm_ok": 0, "fallback": 0, "agree": 0}
    )
    rejects: list[dict[str, Any]] = field(default_factory=list)
    by_reason: dict[str, int] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)
    # (source, qid) keys m23k holds more than once (found before the pass, usually none): only these are
    # remembered while the batches stream, so the driver's state does not grow with the table. None: all.
    repeated: set[tuple[str, str]] | None = None
    gold: dict[str, list[Any]] = field(default_factory=lambda: {"found": [], "gold": [], "domain": []})

    def reject(self, source: str, qid: str, reason: str, detail: str, raw: str | None) -> None:
        self.rejects.append(
            {
                "stage": STAGE,
                "source": source,
                "source_ref": qid,
                "reason": reason,
                "detail": detail,
                "raw": raw,
            }
        )
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1

    def label_batch(self, batch: pa.Table) -> pa.Table | None:
        """`labels` rows for one batch of m23k (source, qid, prompt, metadata)."""
        sources = batch.column("source").to_pylist()
        qids = batch.column("qid").to_pylist()
        prompts = [p or "" for p in batch.column("prompt").to_pylist()]
        metadata = batch.column("metadata").to_pylist()
        self.counts["rows_in"] += batch.num_rows
        keep = []
        for i, (s, q) in enumerate(zip(sources, qids, strict=True)):
            if self.repeated is not None and (s, q) not in self.repeated:
                keep.append(i)
            elif (s, q) in self.seen:
                self.reject(s, q, "duplicate_key", f"({s}, {q}) appears more than once in {INPUT}", None)
            else:
                self.seen.add((s, q))
                keep.append(i)
        if len(keep) < len(sources):
            sources, qids, prompts, metadata = (
                [c[i] for i in keep] for c in (sources, qids, prompts, metadata)
            )
        if not sources:
            return None

        n = len(sources)
        cols = self.matcher.classify_many(prompts)
        cols.update(
            source=sources,
            qid=qids,
            classifier=["offline"] * n,
            gold_meshes=[gold_meshes(m) for m in metadata],
            request_id=[None] * n,
            raw_output=[None] * n,
            attempts=[0] * n,
            error=[None] * n,
            vocabulary=[self.vocab_label] * n,
        )
        kept = [True] * n
        if self.engine is not None:
            self.ask_llm(cols, prompts, kept)
        for i, gold in enumerate(cols["gold_meshes"]):  # only PubMedQA rows carry gold headings
            if gold is not None and kept[i]:
                self.gold["found"].append(cols["descriptors"][i])
                self.gold["gold"].append(gold)
                self.gold["domain"].append(cols["domain_name"][i])
        schema = schemas.get("labels").schema
        table = pa.Table.from_pydict({f.name: cols[f.name] for f in schema}, schema=schema)
        return table if all(kept) else table.filter(pa.array(kept, pa.bool_()))

    def ask_llm(self, cols: dict[str, list[Any]], prompts: list[str], kept: list[bool]) -> None:
        """Ask the LLM about every row (re-asking failures), then overwrite the offline label where it answered."""

        opts = self.opts
        keys = [f"{s}{KEY_SEP}{q}" for s, q in zip(cols["source"], cols["qid"], strict=True)]
        states = {k: LLMState() for k in keys}
        params: dict[str, Any] = {"max_tokens": opts.max_tokens}
        if opts.temperature is not None:
            params["temperature"] = opts.temperature
        for attempt in range(1, opts.max_attempts + 1):
            todo = [i for i, k in enumerate(keys) if states[k].code is None]
            if not todo:
                break
            rows = []
            for i in todo:
                st = states[keys[i]]
                # A parse failure is re-asked with the bad answer shown; an engine error is simply asked again.
                unparseable = st.raw and st.error and st.error.startswith("unparseable")
                previous = (st.raw, st.error.removeprefix("unparseable: ")) if unparseable else None
                messages = ask_messages(prompts[i], self.qualifiers, previous)
                rows.append(
                    make_request(f"{keys[i]}{KEY_SEP}{attempt}", self.model, messages=messages, **params)
                )
            print(f"[{STAGE}] ask {attempt}: {len(rows)} questions to {self.model}")
            responses = run_requests(requests_table(rows), self.engine, ledger_uri=self.ledger_uri)
            absorb_responses(_responses_of(responses), states, self.names)

        engine_label = f"llm:{opts.engine}"
        for i, key in enumerate(keys):
            st = states[key]
            cols["request_id"][i], cols["raw_output"][i], cols["attempts"][i] = (
                st.request_id,
                st.raw,
                st.attempts,
            )
            if st.code is not None:
                self.counts["llm_ok"] += 1
                self.counts["agree"] += cols["domain_code"][i] == st.code
                cols["domain_code"][i], cols["domain_name"][i] = st.code, self.names[int(st.code)]
                cols["classifier"][i], cols["rule"][i], cols["cue"][i] = engine_label, "llm", None
                continue
            error = f"after {st.attempts} ask(s): {st.error or 'no answer'}"
            cols["error"][i] = error
            if opts.fallback == "offline":
                self.counts["fallback"] += 1
            else:
                kept[i] = False
                reason = "classify_engine_error" if "engine error" in error else "classify_unparseable"
                self.reject(cols["source"][i], cols["qid"][i], reason, error, st.raw)


# ---- the stage ---------------------------------------------------------------------------------------
class ClassifyStage(Stage):
    """m23k -> labels (one MeSH qualifier per question), rejects/classify, mesh_qualifiers."""

    name: ClassVar[str] = STAGE
    inputs: ClassVar[tuple[str, ...]] = (INPUT,)
    outputs: ClassVar[tuple[str, ...]] = ("labels", "rejects/classify", "mesh_qualifiers")
    sends_requests: ClassVar[bool] = True  # with method llm; a dry run only plans it
    batch_rows: ClassVar[int] = 8192

    def enabled(self, cfg: CurationConfig) -> bool:
        return cfg.classify.method is not None

    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        opts = cfg.classify
        out: dict[str, Any] = {
            "classify": opts.model_dump(mode="json"),
            "vocabulary": vocabulary_id(opts.mesh_dir),
        }
        if opts.method == "llm" and opts.engine:
            out["engine"] = cfg.engines.get(opts.engine)
        return out

    def plan(self, ctx: StageContext) -> str:
        opts = ctx.config.classify
        if opts.method == "offline":
            return "free (offline rules, no model)"
        rows = ctx.store.tables().get(INPUT, {}).get("rows")
        n = f"{rows:,}" if rows is not None else "every m23k"
        return (
            f"{n} questions to engine {opts.engine!r}, up to {opts.max_attempts} ask(s) each "
            f"(~2,500 prompt tokens per ask with scope notes); fallback: {opts.fallback}"
        )

    def run(self, ctx: StageContext) -> StageResult:

        cfg, store, opts = ctx.config, ctx.store, ctx.config.classify
        if not store.has_table(INPUT):
            raise ClassifyInputError(
                f"classify reads the `{INPUT}` table, which run {store.uri!r} does not have yet; "
                f"run the stages before it first (m1 curate CONFIG --run-dir ... runs them in order)"
            )
        vocab = load_vocabulary(opts.mesh_dir)
        matcher = MeshMatcher(vocab)
        job = ClassifyRun(
            opts=opts,
            matcher=matcher,
            vocab_label=vocab.label,
            qualifiers=vocab.qualifier_rows(),
            names=vocab.qualifier_names,
            ledger_uri=store.ledger_uri,
            repeated=repeated_keys(store),
        )
        print(
            f"[{STAGE}] {opts.method}: {len(job.names)} qualifiers, {len(vocab.descriptor_uis):,} descriptors "
            f"({matcher.n_keys:,} match terms) from {vocab.label}"
        )
        engine = None
        if opts.method == "llm":
            assert opts.engine is not None
            engine, job.model = engine_for(cfg, opts.engine, opts.model, where="classify")

        def labels() -> Iterator[pa.Table]:
            with running(engine) as job.engine:
                columns = ["source", "qid", "prompt", "metadata"]
                for batch in store.dataset(INPUT).to_batches(columns=columns, batch_size=self.batch_rows):
                    if batch.num_rows:
                        out = job.label_batch(pa.Table.from_batches([batch]))
                        if out is not None:
                            yield out

        written = store.write_table("labels", labels())
        rejected = store.write_table(
            "rejects/classify", pa.Table.from_pylist(job.rejects, schema=schemas.get("rejects").schema)
        )
        code_table = store.write_table("mesh_qualifiers", vocab.qualifiers)
        details: dict[str, Any] = {"classify_vocabulary": vocab.label}
        per_domain: Counter[str] = Counter()
        for batch in store.dataset_at(written.path).to_batches(columns=["domain_name"]):
            per_domain.update(
                {d["values"]: d["counts"] for d in pc.value_counts(batch.column(0)).to_pylist()}
            )
        top = sorted(per_domain.items(), key=lambda d: -d[1])[:8]
        details["classify_domains"] = len(per_domain)
        print(
            f"[{STAGE}] {written.rows:,} labelled, {details['classify_domains']} domains; top: "
            + ", ".join(f"{name} {count:,}" for name, count in top)
        )
        agreement = mesh_agreement(job.gold["found"], job.gold["gold"], job.gold["domain"])
        if agreement is not None:
            details["pubmedqa_mesh_agreement"] = agreement
            print(f"[{STAGE}] PubMedQA MeSH agreement: {agreement}")
        if opts.method == "llm":
            c = job.counts
            details.update({"classify_llm_ok": c["llm_ok"], "classify_fallback": c["fallback"]})
            if c["llm_ok"]:
                details["classify_llm_offline_agreement"] = round(c["agree"] / c["llm_ok"], 4)
            print(
                f"[{STAGE}] llm: {c['llm_ok']} coded, {c['fallback']} offline fallbacks, {rejected.rows} rejected"
            )
        return StageResult(
            outputs=[written, rejected, code_table],
            rows_in=job.counts["rows_in"],
            rows_out=written.rows,
            rows_rejected=rejected.rows,
            rejected_by_reason=dict(sorted(job.by_reason.items())),
            details=details,
        )


def repeated_keys(store: Any) -> set[tuple[str, str]]:
    """The (source, qid) keys that m23k holds more than once (DuckDB, memory capped: not the table)."""
    con = bounded_duckdb(store, STAGE)
    try:
        attach(con, "m23k", store.dataset(INPUT))
        rows = con.execute("SELECT source, qid FROM m23k GROUP BY source, qid HAVING count(*) > 1").fetchall()
    finally:
        con.close()
    return {(s, q) for s, q in rows}


def vocabulary_id(mesh_dir: str | None) -> Any:
    """What identifies the vocabulary for resume: the offline package's version, or the parsed folder's mesh.json."""
    if mesh_dir is None:
        from importlib import metadata

        try:
            return f"{OFFLINE_PACKAGE} {metadata.version(OFFLINE_PACKAGE)}"
        except metadata.PackageNotFoundError:
            return f"{OFFLINE_PACKAGE} (not installed)"
    manifest = Path(mesh_dir) / "mesh.json"
    return json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else str(mesh_dir)
