"""`python -m curation ...` is `m1 ...`: the entrypoint that resolves wherever the package imports (a Ray job's
working dir, a node without the venv's console scripts on PATH)."""

from curation.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
