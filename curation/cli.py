"""The `m1` command line: one console script, one subcommand per capability.

m1 curate CONFIG.yaml|demo --run-dir DIR [--stages ingest,...] [--force]
m1 sql RUN_DIR "SELECT ..." [--format table|csv|json]
m1 runs [ROOT] [--format table|json]
m1 synth OUT_DIR --rows N          (synthetic pools for benchmarks)
m1 rehearse --port P --pool RUN    (an OpenAI-compatible rehearsal server)
m1 tiny-model DIR                  (a tiny random-init Qwen2 model for tests and the demo)
m1 ledger-import FILE ...          (replay recorded responses without paying)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import import_module
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation import __version__
from curation.errors import RunDirError, UserError, redact_secrets
from curation.jobenv import check_run_dir
from curation.rundir import new_run_dir

if TYPE_CHECKING:  # the store layer is imported where a command runs, not at CLI start-up
    # deferred: pyarrow, Ray and duckdb load only with the command that needs them (the CLI starts light)
    from curation.store.health import TableProblem
    from curation.store.runstore import RunStore

DEFAULT_CONFIG = "configs/demo.yaml"
# Commands that only read a run dir; every other command given a --run-dir writes one.
READ_ONLY_COMMANDS = {"sql", "runs"}

# Modules that contribute a subcommand through add_parser(subparsers); imported lazily by name so that
# `m1 sql` does not pay for importing vLLM or transformers.
PLUGIN_MODULES = {
    "demo": "curation.devtools.demo",
    "synth": "curation.devtools.synth",
    "rehearse": "curation.devtools.rehearse",
    "tiny-model": "curation.devtools.tiny_model",
    "ledger-import": "curation.engines.importer",
    "export": "curation.store.export",
    "mesh": "curation.mesh.cli",
    "sft": "sft.cli",
    "eval": "evaluation.sweep",
    "report": "evaluation.report",
}


def default_config_path() -> Path:
    return Path(str(files("curation").joinpath(DEFAULT_CONFIG)))


def config_arg(config: str | None) -> Path:
    """The config named on the command line; ``demo`` names the embedded demo config (never a silent default)."""
    if not config:
        raise UserError(
            "no config given: name a YAML config (m1 curate my_config.yaml --run-dir ...), or `demo` for the "
            f"embedded demo config ({default_config_path()}; `m1 demo` runs the whole demo)"
        )
    if config == "demo" and not Path(config).exists():
        return default_config_path()
    return Path(config)


def stage_registry() -> dict[str, Callable[[], Any]]:
    """Stage name -> factory, in pipeline order (see curation/stages/__init__.py)."""
    # deferred: pyarrow, Ray and duckdb load only with the command that needs them (the CLI starts light)
    from curation.stages import stage_registry as registry

    return registry()


# ---- curate ----------------------------------------------------------------------------------------
def cmd_curate(args: argparse.Namespace) -> int:
    # deferred: pyarrow, Ray and duckdb load only with the command that needs them (the CLI starts light)
    from curation.config import load_config
    from curation.pipeline import format_funnel, run_stages
    from curation.store.catalog import write_catalog
    from curation.store.runstore import RunStore

    config_path = config_arg(args.config)
    cfg = load_config(config_path)
    registry = stage_registry()
    wanted = (
        [s.strip() for s in args.stages.split(",") if s.strip()]
        if args.stages is not None
        else list(registry)
    )
    unknown = [s for s in wanted if s not in registry]
    if unknown or not wanted:
        raise UserError(
            f"--stages: unknown stage(s) {unknown or [args.stages]}; known: {', '.join(registry)}"
        )
    # Stages always run in pipeline order, whatever order --stages lists them in.
    stages = [registry[name]() for name in registry if name in wanted]
    if not args.dry_run:  # a vLLM engine's model must be loadable: say so now, not in a worker's traceback
        # deferred: pyarrow, Ray and duckdb load only with the command that needs them (the CLI starts light)
        from curation.modelpath import check_engine_models

        check_engine_models(cfg, [s.name for s in stages if s.enabled(cfg)], source=str(config_path))
    # A failed first run leaves no empty run behind (files are kept), also when a Ray watchdog ends the process.
    with new_run_dir(args.run_dir):
        store = RunStore(args.run_dir)
        print(f"m1 curate: config {config_path} -> run {store.location('')}")
        records = run_stages(stages, cfg, store, force=args.force, dry_run=args.dry_run)
    catalog = write_catalog(store, skip=set(store.missing_tables())) if store.exists() else None
    print("\nfunnel:")
    print(format_funnel(records))
    if catalog:
        print(f"\ntables: {', '.join(sorted(store.tables()))}")
        print(f'query:  m1 sql {args.run_dir} "SELECT source, count(*) FROM questions GROUP BY source"')
        print(f"        or: cd {store.root} && duckdb -readonly catalog.duckdb   (any DuckDB client >= 1.0)")
    return 0


# ---- sql -------------------------------------------------------------------------------------------
def _open_run_for_sql(run_dir: str) -> tuple[RunStore, dict[str, TableProblem]]:
    """The run's store, after every table's footers and schema were checked; problems are warned about and the
    table is left out, so the rest stays queryable."""
    # deferred: pyarrow, Ray and duckdb load only with the command that needs them (the CLI starts light)
    from curation.store.health import check_run
    from curation.store.runstore import RunStore

    store = RunStore(run_dir, create=False)
    if not store.exists():
        raise RunDirError(
            f"{run_dir!r} is not a run directory (no manifest.json): has a stage committed yet?"
        )
    return store, check_run(store)


def _inside_a_run(path: Path) -> Path | None:
    """The run directory that ``path`` would be written into, if any (a folder above it holds manifest.json)."""
    for folder in [path.parent, *path.parent.parents]:
        if (folder / "manifest.json").is_file() and (
            (folder / "tables").is_dir() or (folder / "ledger").is_dir()
        ):
            return folder
    return None


def _write_output(table: Any, target: str, run_root: str | None) -> None:
    """Write query results to ``target`` (.csv, .json/.jsonl, .parquet) atomically, never inside a run."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(target).expanduser().resolve()
    run = _inside_a_run(path)
    if run is None and run_root is not None:
        root = Path(run_root).resolve()
        run = root if path == root or root in path.parents else None
    if run is not None:
        raise UserError(
            f"--output {target}: that is inside the run directory {run}; m1 sql never writes into a run"
        )
    if not path.parent.is_dir():
        raise UserError(f"--output {target}: no such folder {path.parent}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json", ".jsonl", ".parquet"):
        raise UserError(
            f"--output {target}: unknown file type {suffix or '(none)'!r}; use .csv, .jsonl or .parquet"
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if suffix == ".parquet":
            pq.write_table(table, tmp)
        elif suffix == ".csv":
            pacsv.write_csv(table, tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"--output {target}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"{table.num_rows:,} rows written to {path}", file=sys.stderr)


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    # deferred: pyarrow, Ray and duckdb load only with the command that needs them (the CLI starts light)
    from curation.store.catalog import connect, write_catalog

    if not args.query.strip():
        raise UserError(
            'the query is empty; e.g. m1 sql RUN_DIR "SELECT source, count(*) FROM questions GROUP BY 1"'
        )
    store, problems = _open_run_for_sql(args.run_dir)
    for problem in problems.values():
        print(f"m1 sql: warning: {problem.message(args.run_dir)}; it is left out", file=sys.stderr)
    skip = set(problems)
    # Keep catalog.duckdb current for other clients (the ledger grows between commits); a read-only run folder
    # simply keeps the catalog it has.
    try:
        write_catalog(store, skip=skip)
    except (OSError, duckdb.Error):
        pass
    con = connect(store, skip=skip)  # in-memory, over Arrow datasets, with DuckDB's file access switched off
    try:
        rel = con.sql(args.query)
    except (duckdb.PermissionException, duckdb.InvalidInputException) as exc:
        if not isinstance(exc, duckdb.PermissionException) and "has been locked" not in str(exc):
            raise UserError(f"query failed: {exc}") from None
        raise UserError(
            f"query refused: m1 sql is read-only and reads only the run's tables ({str(exc).splitlines()[0]}); "
            "to save results use --output FILE"
        ) from None
    except duckdb.Error as exc:
        left_out = [t for t in problems if _names_view(str(exc), t)]
        hint = f" (table {left_out[0]!r} was left out: see the warning above)" if left_out else ""
        raise UserError(f"query failed: {exc}{hint}") from None
    if rel is None:  # a statement without rows
        return 0
    try:
        if args.output:
            _write_output(rel.to_arrow_table(), args.output, store.root if store.is_local else None)
            return 0
        if args.format == "table":
            rel.show(max_rows=args.max_rows, max_width=args.max_width)
            return 0
        table = rel.to_arrow_table()
    except duckdb.Error as exc:
        raise UserError(f"query failed: {exc}") from None
    if args.format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sys.stdout.buffer)
        sys.stdout.flush()
    else:
        for row in table.to_pylist():
            print(json.dumps(row, default=str, ensure_ascii=False))
    return 0


def _names_view(message: str, table: str) -> bool:
    # deferred: pyarrow, Ray and duckdb load only with the command that needs them (the CLI starts light)
    from curation.store.catalog import view_name

    return f"name {view_name(table)} does not exist" in message or f'"{view_name(table)}"' in message


def cmd_catalog(args: argparse.Namespace) -> int:
    # deferred: pyarrow, Ray and duckdb load only with the command that needs them (the CLI starts light)
    from curation.store.catalog import write_catalog

    store, problems = _open_run_for_sql(args.run_dir)
    for problem in problems.values():
        print(f"m1 catalog: warning: {problem.message(args.run_dir)}; it is left out", file=sys.stderr)
    if not store.is_local:
        raise UserError(
            f"{args.run_dir}: catalog.duckdb is written for local runs only; query this run with m1 sql, or see "
            "the README (SQL over object-store runs) for the views to paste into your own DuckDB client"
        )
    path = write_catalog(store, skip=set(problems), absolute=args.absolute)
    paths = "absolute paths" if args.absolute else "paths relative to the run directory"
    print(f"wrote {path} ({paths}); open it with: cd {store.root} && duckdb -readonly catalog.duckdb")
    return 0


# ---- runs ------------------------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace) -> int:
    import pyarrow.fs as pafs

    # deferred: pyarrow, Ray and duckdb load only with the command that needs them (the CLI starts light)
    from curation.store.health import check_run
    from curation.store.runstore import RunStore, resolve

    root = args.root.rstrip("/") or "/"
    fs, base = resolve(root)
    try:
        kind = fs.get_file_info(base).type
    except OSError as exc:
        raise UserError(f"{root}: cannot read ({str(exc).splitlines()[0]})") from None
    if kind != pafs.FileType.Directory:
        what = "is a file, not a folder" if kind == pafs.FileType.File else "no such folder"
        raise UserError(f"{root}: {what} (m1 runs lists the run directories under a folder)")

    def is_run(path: str) -> bool:
        return fs.get_file_info(f"{path}/manifest.json").type == pafs.FileType.File

    prefix = root[: len(root) - len(base)] if "://" in root else ""  # s3://bucket/x -> "s3://" + bucket/x
    # (what the user names the run by, its path on ``fs``)
    if is_run(base):
        candidates = [(root, base)]
    else:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=False))
        candidates = sorted((prefix + i.path, i.path) for i in infos if i.type == pafs.FileType.Directory)
    rows = []
    broken = 0
    for path, fs_path in candidates:
        if not is_run(fs_path):
            continue
        try:
            store = RunStore(path, create=False)
            m = store.manifest
            stages = m.get("stages", {})
            problems = check_run(store)
            rows.append(
                {
                    "run": path,
                    "updated": str(m.get("updated_at", "")),
                    "config_hash": str(m.get("config_hash", "")),
                    "stages": "CORRUPT"
                    if any(p.kind == "corrupt" for p in problems.values())
                    else ",".join(f"{n}:{s.get('status')}" for n, s in stages.items()),
                    "tables": ", ".join(
                        f"{n}={e.get('rows', 0):,}"
                        + (f" ({problems[n].kind.upper()}: {problems[n].detail})" if n in problems else "")
                        for n, e in sorted(m.get("tables", {}).items())
                    ),
                }
            )
            broken += bool(problems)
        except (UserError, OSError, AttributeError, TypeError, ValueError) as exc:
            broken += 1
            reason = str(exc).split("\n")[0]
            rows.append(
                {"run": path, "updated": "", "config_hash": "", "stages": "CORRUPT", "tables": reason}
            )
    if not rows:
        print(f"no runs under {root}")
        return 0
    if args.format == "json":
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        if broken:
            print(f"m1 runs: {broken} run(s) flagged CORRUPT, MISSING or UNREADABLE", file=sys.stderr)
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"runs under {root}")
    for col in rows[0]:
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*r.values())
    Console(width=200).print(t)
    if broken:
        print(f"m1 runs: {broken} run(s) flagged CORRUPT, MISSING or UNREADABLE above", file=sys.stderr)
    return 0


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse reports a bad value as a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m1", description="m1-style medical reasoning data curation")
    parser.add_argument("--version", action="version", version=f"m1-curation {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("curate", help="run the configured curation stages (with resume)")
    p.add_argument("config", nargs="?", help="YAML config, or `demo` for the embedded demo config")
    p.add_argument("--run-dir", required=True, help="run directory (local path or s3://... URI)")
    # deferred: pyarrow, Ray and duckdb load only with the command that needs them (the CLI starts light)
    from curation.stages import PIPELINE

    p.add_argument(
        "--stages",
        help=f"comma-separated subset of stages to run (in pipeline order: {', '.join(n for n, _ in PIPELINE)})",
    )
    p.add_argument("--force", action="store_true", help="rerun stages even if complete for this config")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run the free stages, then print the plan and projected cost of the LLM stages; send nothing",
    )
    p.set_defaults(func=cmd_curate)

    p = sub.add_parser("sql", help="query a run's tables with DuckDB")
    p.add_argument("run_dir")
    p.add_argument("query")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--max-rows", type=positive_int, default=40, help="rows shown in table format")
    p.add_argument("--max-width", type=positive_int, default=160, help="characters per line in table format")
    p.add_argument(
        "--output",
        metavar="FILE",
        help="write the result to FILE (.csv, .jsonl or .parquet) instead of the terminal; never inside a run",
    )
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("catalog", help="rebuild RUN_DIR/catalog.duckdb (for DuckDB clients, 1.x included)")
    p.add_argument("run_dir")
    p.add_argument(
        "--absolute",
        action="store_true",
        help="views with absolute paths (default: relative to the run directory, so a moved run keeps working)",
    )
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("runs", help="list runs and their table counts")
    p.add_argument("root", nargs="?", default="runs")
    p.add_argument("--format", choices=["table", "json"], default="table", help="json: one object per run")
    p.set_defaults(func=cmd_runs)

    # Plugin subcommands: only import the one being run (or all, for --help).
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module in PLUGIN_MODULES.items():
        if wanted is not None and wanted != name:
            sub.add_parser(name, help=f"(see m1 {name} --help)")
            continue
        try:
            import_module(module).add_parser(sub)
        except ImportError as exc:
            sub.add_parser(name, help=f"unavailable: {exc}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.error(f"m1 {args.command}: this subcommand is not available in this installation")
    from pydantic import ValidationError

    def fail(message: str, code: int = 2) -> int:
        # Every message passes the secret scrubber: whatever raised it, a key never reaches the terminal.
        print(f"m1 {args.command}: {redact_secrets(message)}", file=sys.stderr)
        return code

    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C: cleanup handlers run and the run directory stays consistent.
        signal.signal(signal.SIGTERM, _terminate)
    try:
        if isinstance(getattr(args, "run_dir", None), str) and args.command not in READ_ONLY_COMMANDS:
            # Under `ray job submit`: no run dir inside the job's temporary working dir (curate, eval, demo, ...).
            check_run_dir(args.run_dir)
        return int(args.func(args) or 0)
    except UserError as exc:
        return fail(str(exc))
    except ValidationError as exc:
        # deferred: curation.config imports every engine's config (aiohttp, pyarrow): only for a bad config
        from curation.config import format_validation_error

        return fail(format_validation_error(exc))
    except (
        FileNotFoundError,
        FileExistsError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    ) as exc:
        # Files named on the command line: user mistakes, not bugs; name the file and what is wrong.
        if exc.filename is not None:
            return fail(f"{exc.filename}: {exc.strerror or exc}")
        return fail(str(exc))
    except OSError as exc:
        # An object store that refuses or stops answering (here or in a Ray worker): what it said, what to check.
        # deferred: pyarrow, Ray and duckdb load only with the command that needs them (the CLI starts light)
        from curation.store.runstore import store_hint

        hint = store_hint(exc)
        if not hint:
            raise
        lines = [line.strip() for line in str(exc).splitlines() if "AWS Error" in line or "Bucket" in line]
        return fail(
            f"the run's object store failed: {lines[-1] if lines else str(exc).splitlines()[0]}{hint}"
        )
    except SystemExit as exc:
        if isinstance(exc.code, str):
            return fail(exc.code.removeprefix(f"m1 {args.command}: "), 1)
        raise
    except KeyboardInterrupt:
        print(f"\nm1 {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
