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
from typing import Any

from curation import __version__
from curation.errors import RunDirError, UserError, redact_secrets
from curation.jobenv import check_run_dir

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
    from curation.stages import stage_registry as registry

    return registry()


# ---- curate ----------------------------------------------------------------------------------------
def cmd_curate(args: argparse.Namespace) -> int:
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
    created = _is_local(args.run_dir) and not os.path.lexists(args.run_dir)
    store = RunStore(args.run_dir)
    print(f"m1 curate: config {config_path} -> run {store.location('')}")
    try:
        records = run_stages(stages, cfg, store, force=args.force, dry_run=args.dry_run)
    except BaseException:
        if created:
            _remove_empty_dirs(args.run_dir)  # a failed first run leaves no empty run behind (files are kept)
        raise
    catalog = write_catalog(store, skip=set(store.missing_tables())) if store.exists() else None
    print("\nfunnel:")
    print(format_funnel(records))
    if catalog:
        print(f"\ntables: {', '.join(sorted(store.tables()))}")
        print(f'query:  m1 sql {args.run_dir} "SELECT source, count(*) FROM questions GROUP BY source"')
        print(f"        or open {catalog} in any DuckDB client")
    return 0


def _is_local(uri: str) -> bool:
    return "://" not in uri


def _remove_empty_dirs(root: str) -> None:
    """Remove ``root`` and the folders under it if they hold no file at all (never removes a file)."""
    for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


# ---- sql -------------------------------------------------------------------------------------------
def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from curation.store.catalog import connect, write_catalog
    from curation.store.runstore import RunStore

    if not args.query.strip():
        raise UserError(
            'the query is empty; e.g. m1 sql RUN_DIR "SELECT source, count(*) FROM questions GROUP BY 1"'
        )
    store = RunStore(args.run_dir, create=False)
    if not store.exists():
        raise RunDirError(
            f"{args.run_dir!r} is not a run directory (no manifest.json): has a stage committed yet?"
        )
    missing = store.missing_tables()
    for name, rel in sorted(missing.items()):
        print(
            f"m1 sql: warning: table {name!r} ({rel}) has no files left (deleted by hand?); it is left out. "
            "Rerun the stage that writes it with m1 curate --force",
            file=sys.stderr,
        )
    # Rebuild the catalog (the ledger grows between commits) and query it; non-local runs, and runs whose folder is
    # read-only, get in-memory views.
    try:
        catalog = write_catalog(store, skip=set(missing))
    except (OSError, duckdb.Error):
        catalog = None
    con = duckdb.connect(catalog, read_only=True) if catalog else connect(store, skip=set(missing))
    try:
        rel = con.sql(args.query)
    except duckdb.Error as exc:
        raise UserError(f"query failed: {exc}") from None
    if rel is None:  # a statement without rows
        return 0
    try:
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


# ---- runs ------------------------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace) -> int:
    from curation.store.runstore import RunStore

    root = Path(args.root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "no such folder"
        raise UserError(f"{args.root}: {what} (m1 runs lists the run directories under a folder)")
    candidates = (
        [root] if (root / "manifest.json").exists() else sorted(p for p in root.glob("*") if p.is_dir())
    )
    rows = []
    broken = 0
    for path in candidates:
        if not (path / "manifest.json").exists():
            continue
        try:
            store = RunStore(str(path), create=False)
            m = store.manifest
            stages = m.get("stages", {})
            missing = store.missing_tables()
            rows.append(
                {
                    "run": str(path),
                    "updated": str(m.get("updated_at", "")),
                    "config_hash": str(m.get("config_hash", "")),
                    "stages": ",".join(f"{n}:{s.get('status')}" for n, s in stages.items()),
                    "tables": ", ".join(
                        f"{n}={e.get('rows', 0):,}" + (" (FILES MISSING)" if n in missing else "")
                        for n, e in sorted(m.get("tables", {}).items())
                    ),
                }
            )
            broken += bool(missing)
        except (UserError, OSError, AttributeError, TypeError, ValueError) as exc:
            broken += 1
            reason = str(exc).split("\n")[0]
            rows.append(
                {"run": str(path), "updated": "", "config_hash": "", "stages": "CORRUPT", "tables": reason}
            )
    if not rows:
        print(f"no runs under {root}")
        return 0
    if args.format == "json":
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        if broken:
            print(f"m1 runs: {broken} run(s) flagged CORRUPT or FILES MISSING", file=sys.stderr)
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
        print(f"m1 runs: {broken} run(s) flagged CORRUPT or FILES MISSING above", file=sys.stderr)
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
    p.set_defaults(func=cmd_sql)

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

    from curation.config import format_validation_error

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
