"""Reports of a run: the accuracy table (Markdown), accuracy-versus-budget PNGs, and `m1 report RUN_DIR`, one
self-contained HTML page (figures embedded as base64 PNG, no network) with the SQL behind every figure.

Every figure is one DuckDB query over the run's catalog views (the same views `m1 sql` answers), so a reader can
rerun it: ``m1 sql RUN_DIR "<the query>"``. Sections whose tables the run does not have say so instead.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import duckdb

from curation.errors import UserError
from curation.jobenv import nonempty_path
from curation.store.catalog import connect
from curation.store.runstore import RunStore

SQL: dict[str, str] = {
    "accuracy": (
        "SELECT model, benchmark, protocol, forcing, budget, samples, accuracy, accuracy_m1, invalid,\n"
        "       mean_thinking_tokens, ran_out, mean_forced\n"
        "FROM eval_scores ORDER BY model, benchmark, protocol, forcing, budget"
    ),
    "thinking": (
        "SELECT model, protocol, forcing, budget, sum(mean_thinking_tokens * samples) / sum(samples) AS mean_thinking_tokens,\n"
        "       sum(ran_out) AS ran_out, sum(samples) AS samples\n"
        "FROM eval_scores GROUP BY ALL ORDER BY model, protocol, forcing, budget"
    ),
    "funnel": (
        "SELECT stage, status, rows_in, rows_out, rows_rejected, round(wall_s, 1) AS wall_s\n"
        "FROM stages ORDER BY position NULLS LAST, started_at"
    ),
    "rejects": "SELECT stage, reason, count(*) AS rows FROM rejects GROUP BY stage, reason ORDER BY stage, rows DESC",
    "sources": "SELECT source, count(*) AS questions FROM questions GROUP BY source ORDER BY questions DESC",
    "curated_sources": "SELECT source, count(*) AS rows FROM curated GROUP BY source ORDER BY rows DESC",
    "domains": (
        "SELECT domain_code, domain_name, count(*) AS questions FROM labels\n"
        "GROUP BY domain_code, domain_name ORDER BY questions DESC"
    ),
    "reasoning": (
        "SELECT source, len(string_split(trim(reasoning), ' ')) AS reasoning_words FROM {table}\n"
        "WHERE reasoning IS NOT NULL AND trim(reasoning) <> ''"
    ),
    "teacher": (
        "SELECT model, count(*) AS attempts, sum(accepted::INT) AS accepted, sum(prompt_tokens) AS prompt_tokens,\n"
        "       sum(completion_tokens) AS completion_tokens, round(sum(cost_usd), 4) AS cost_usd\n"
        "FROM traces GROUP BY model ORDER BY model"
    ),
    "sft": "SELECT sft_run, step, loss FROM sft_metrics ORDER BY sft_run, step",
    "m23k_sources": "SELECT source, count(*) AS rows FROM m23k GROUP BY source ORDER BY rows DESC",
    "m1k_sources": "SELECT source, count(*) AS rows FROM m1k GROUP BY source ORDER BY rows DESC",
    "m1k_domains": (
        "SELECT domain_code, domain_name, count(*) AS rows FROM m1k\n"
        "GROUP BY domain_code, domain_name ORDER BY rows DESC"
    ),
}


def _connect(store: RunStore) -> duckdb.DuckDBPyConnection:

    return connect(store)


def _has(con: duckdb.DuckDBPyConnection, *views: str) -> bool:
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    return all(v in names for v in views)


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return cols, cur.fetchall()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


# -------------------------------------------------------------------------------------------- accuracy table
def accuracy_markdown(store: RunStore, *, metric: str = "accuracy") -> str:
    """Accuracy per (model, benchmark, protocol, forcing) x budget as a Markdown table, plus mean thinking tokens."""
    if metric not in ("accuracy", "accuracy_m1"):
        raise ValueError("metric must be accuracy or accuracy_m1")
    con = _connect(store)
    if not _has(con, "eval_scores"):
        return "_no eval_scores in this run_"
    cols, rows = _rows(con, SQL["accuracy"])
    idx = {c: i for i, c in enumerate(cols)}
    budgets = sorted({r[idx["budget"]] for r in rows})
    table: dict[tuple[Any, ...], dict[int, Any]] = {}
    for r in rows:
        key = (r[idx["model"]], r[idx["benchmark"]], r[idx["protocol"]], r[idx["forcing"]])
        table.setdefault(key, {})[r[idx["budget"]]] = r
    head = ["model", "benchmark", "protocol", "forcing", *[str(b) for b in budgets]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, by_budget in table.items():
        cells = []
        for b in budgets:
            r = by_budget.get(b)
            cells.append("" if r is None else f"{100 * r[idx[metric]]:.1f} ({r[idx['invalid']]} inv.)")
        lines.append("| " + " | ".join([*map(str, key), *cells]) + " |")
    _, think = _rows(con, SQL["thinking"])
    lines += [
        "",
        "Mean thinking tokens per budget:",
        "",
        "| model | protocol | forcing | budget | mean thinking tokens | ran out |",
        "|---|---|---|---|---|---|",
    ]
    for model, protocol, forcing, budget, mean, ran_out, samples in think:
        lines.append(f"| {model} | {protocol} | {forcing} | {budget} | {mean:.1f} | {ran_out}/{samples} |")
    label = "strict matcher; INVALID counts as wrong" if metric == "accuracy" else "HuatuoGPT/m1 matcher"
    return f"Accuracy (%), {label}:\n\n" + "\n".join(lines)


# -------------------------------------------------------------------------------------------------- figures
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_figures(store: RunStore, *, title_note: str = "") -> dict[str, bytes]:
    """One PNG per model: accuracy against thinking budget (log2 axis), a line per benchmark x forcing count."""
    con = _connect(store)
    if not _has(con, "eval_scores"):
        return {}
    cols, rows = _rows(con, SQL["accuracy"])
    idx = {c: i for i, c in enumerate(cols)}
    plt = _pyplot()
    figures = {}
    for model in sorted({r[idx["model"]] for r in rows}):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        series: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
        for r in rows:
            if r[idx["model"]] == model:
                key = (r[idx["benchmark"]], r[idx["protocol"]], r[idx["forcing"]])
                series.setdefault(key, []).append((max(r[idx["budget"]], 1), 100 * r[idx["accuracy"]]))
        for (bench, protocol, forcing), points in sorted(series.items()):
            points.sort()
            style = "-" if forcing == 0 else "--"
            label = f"{bench} ({protocol}" + (f", forcing {forcing})" if forcing else ")")
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("thinking budget (tokens)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{model}: accuracy vs thinking budget{title_note}", fontsize=10)
        ax.legend(fontsize=7)
        figures[model] = _png(fig)
    return figures


def write_accuracy_outputs(store: RunStore, out_dir: str | Path, *, title_note: str = "") -> list[Path]:
    """accuracy.md and accuracy-<model>.png files under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "accuracy.md"]
    paths[0].write_text(accuracy_markdown(store) + "\n", encoding="utf-8")
    for model, png in accuracy_figures(store, title_note=title_note).items():
        path = out / f"accuracy-{model}.png"
        path.write_bytes(png)
        paths.append(path)
    return paths


def _hist(values: list[float], title: str, xlabel: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.hist(values, bins=min(40, max(5, len(values) // 5)), color="#4472c4")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    return _png(fig)


def _hist_by(groups: dict[str, list[float]], title: str, xlabel: str) -> bytes:
    """One outlined histogram per group on shared bins (the groups' shapes compare at a glance)."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    every = [v for values in groups.values() for v in values]
    bins = np.histogram_bin_edges(every, bins=min(40, max(5, len(every) // 5)))
    for name in sorted(groups, key=lambda g: -len(groups[g])):
        ax.hist(
            groups[name], bins=bins, histtype="step", linewidth=1.4, label=f"{name} ({len(groups[name])})"
        )
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    return _png(fig)


def _bars(labels: list[str], values: list[float], title: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, max(2.2, 0.28 * len(labels) + 1)))
    ax.barh(labels[::-1], values[::-1], color="#70ad47")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _line(series: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str, ylabel: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name)
    if len(series) > 1:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return _png(fig)


# ------------------------------------------------------------------------------------------------ HTML page
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1000px;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f2f2f2} td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee} .note{color:#666;font-style:italic}
details{margin:.4em 0} pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
.scroll{overflow-x:auto}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:.6em;margin:1em 0}
"""


class _Page:
    def __init__(self, title: str) -> None:
        self.parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]

    def add(self, raw: str) -> None:
        self.parts.append(raw)

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def table(self, cols: list[str], rows: list[tuple[Any, ...]], limit: int = 200) -> None:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
            for row in rows[:limit]
        )
        more = f'<p class="note">{len(rows) - limit} more rows</p>' if len(rows) > limit else ""
        self.parts.append(f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>{more}')

    def image(self, png: bytes, alt: str) -> None:
        data = base64.b64encode(png).decode("ascii")
        self.parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')

    def sql(self, query: str, run_dir: str) -> None:
        shell = f'm1 sql {run_dir} "{query}"'.replace("\n", " ")
        self.parts.append(
            f"<details><summary>SQL behind this figure</summary><pre>{html.escape(query)}</pre>"
            f"<pre>{html.escape(shell)}</pre></details>"
        )

    def render(self, title: str) -> str:
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(self.parts)
            + "</body></html>"
        )


def _sft_log(
    store: RunStore, con: duckdb.DuckDBPyConnection
) -> tuple[dict[str, tuple[list[float], list[float]]], str] | None:
    """Loss per step of each SFT run: the `sft_metrics` table, else a trainer_state.json in the run folder."""
    if _has(con, "sft_metrics"):
        _, rows = _rows(con, SQL["sft"])
        series: dict[str, tuple[list[float], list[float]]] = {}
        for run, step, loss in rows:
            xs, ys = series.setdefault(run, ([], []))
            xs.append(step)
            ys.append(loss)
        if series:
            return series, SQL["sft"]
    if not store.is_local:
        return None
    for path in sorted(Path(store.root).rglob("trainer_state.json")):
        try:
            history = json.loads(path.read_text(encoding="utf-8")).get("log_history", [])
        except (OSError, json.JSONDecodeError):
            continue
        points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
        if points:
            rel = str(path.relative_to(store.root))
            return {
                rel: ([p[0] for p in points], [p[1] for p in points])
            }, f"-- log_history of {rel} (not a table)"
    return None


def build_report(run_dir: str, *, title: str | None = None, banner: str | None = None) -> str:
    """The HTML page of a run (a string)."""
    store = RunStore(run_dir, create=False)
    if not store.exists():
        raise UserError(f"{run_dir!r} is not a run directory (no manifest.json)")
    con = _connect(store)
    title = title or f"m1 run report: {Path(store.root).name}"
    page = _Page(title)
    manifest = store.manifest
    page.note(
        f"run {manifest.get('run_id', '?')} at {store.location('')}, updated {manifest.get('updated_at', '?')}; "
        f"tables: {', '.join(sorted(store.tables())) or 'none'}"
    )
    if banner:
        page.add(f'<div class="banner">{html.escape(banner)}</div>')

    page.heading("Funnel: rows in, out and rejected per stage")
    _, stage_rows = _rows(con, SQL["funnel"])
    if stage_rows:
        cols, rows = _rows(con, SQL["funnel"])
        page.table(cols, rows)
        page.sql(SQL["funnel"], run_dir)
        cols, rows = _rows(con, SQL["rejects"])
        page.add("<h3>Why rows were rejected</h3>")
        page.table(cols, rows) if rows else page.note("no rejects")
        page.sql(SQL["rejects"], run_dir)
    else:
        page.note("no curation stages in this run")

    page.heading("Source and domain mix")
    for key, view, label in (
        ("sources", "questions", "questions per source (the pool after ingest)"),
        ("curated_sources", "curated", "curated rows per source"),
        ("m23k_sources", "m23k", "m23K rows per source"),
        ("m1k_sources", "m1k", "m1K rows per source"),
        ("domains", "labels", "questions per domain"),
        ("m1k_domains", "m1k", "m1K rows per domain"),
    ):
        if _has(con, view):
            cols, rows = _rows(con, SQL[key])
            if rows:
                page.image(
                    _bars(
                        [str(r[-2] if key == "domains" else r[0]) for r in rows], [r[-1] for r in rows], label
                    ),
                    label,
                )
                page.table(cols, rows, limit=80)
            page.sql(SQL[key], run_dir)
        else:
            page.note(f"no `{view}` table in this run ({label})")

    page.heading("Reasoning length")
    final = next((t for t in ("m23k", "curated") if _has(con, t)), None)
    if final is not None:
        query = SQL["reasoning"].format(table=final)
        _, rows = _rows(con, query)
        if rows:
            by_source: dict[str, list[float]] = {}
            for source, words in rows:
                by_source.setdefault(source, []).append(words)
            page.image(
                _hist_by(by_source, f"{final}: teacher reasoning length per source", "words of reasoning"),
                "reasoning length",
            )
        else:
            page.note(f"no reasoning in `{final}`")
        page.sql(query, run_dir)
    else:
        page.note("no `m23k` or `curated` table in this run")
    if _has(con, "eval_responses"):
        q = "SELECT model, budget, thinking_tokens FROM eval_responses WHERE protocol = 'budget'"
        _, rows = _rows(con, q)
        if rows:
            page.image(
                _hist([r[2] for r in rows], "evaluation: thinking tokens per answer", "tokens"),
                "thinking tokens",
            )
            page.sql(q, run_dir)

    page.heading("Teacher cost and tokens")
    if _has(con, "traces"):
        cols, rows = _rows(con, SQL["teacher"])
        page.table(cols, rows)
        page.sql(SQL["teacher"], run_dir)
    else:
        page.note("no `traces` table in this run")

    page.heading("SFT loss")
    sft = _sft_log(store, con)
    if sft:
        series, where = sft
        page.image(_line(series, "SFT training loss", "step", "loss"), "SFT loss")
        page.sql(where, run_dir)
    else:
        page.note("no SFT metrics in this run (an `sft_metrics` table or a trainer_state.json)")

    page.heading("Accuracy versus thinking budget")
    if _has(con, "eval_scores"):
        for model, png in accuracy_figures(store).items():
            page.image(png, f"accuracy of {model}")
        cols, rows = _rows(con, SQL["accuracy"])
        page.table(cols, rows)
        page.sql(SQL["accuracy"], run_dir)
        cols, rows = _rows(con, SQL["thinking"])
        page.add("<h3>Mean thinking tokens per budget</h3>")
        page.table(cols, rows)
        page.sql(SQL["thinking"], run_dir)
    else:
        page.note("no `eval_scores` table in this run (run `m1 eval`)")
    return page.render(title)


def write_report(run_dir: str, out: str | Path | None = None, **kwargs: Any) -> Path:
    """Write the HTML page (default RUN_DIR/report.html) atomically and return its path."""
    store = RunStore(run_dir, create=False)
    path = Path(out) if out else Path(store.root) / "report.html"
    text = build_report(run_dir, **kwargs)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def add_parser(subparsers: Any) -> Any:
    """``m1 report RUN_DIR [--out FILE]``: one self-contained HTML page for a run."""
    parser = subparsers.add_parser(
        "report",
        help="write one self-contained HTML report of a run (funnel, mix, lengths, cost, SFT, accuracy)",
    )
    parser.add_argument("run_dir")
    parser.add_argument("--out", type=nonempty_path, help="output file (default RUN_DIR/report.html)")
    parser.add_argument("--title", help="page title")
    parser.add_argument("--banner", help="a note shown at the top (e.g. 'tiny-model demonstration')")
    parser.set_defaults(func=_cli)
    return parser


def _cli(args: Any) -> int:
    path = write_report(args.run_dir, args.out, title=args.title, banner=args.banner)
    print(f"m1 report: wrote {path}")
    return 0
