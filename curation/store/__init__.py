"""Where a run lives: the run store (tables, manifest, ledger) and the DuckDB catalog over it."""
