"""Evaluation with thinking budgets and budget forcing (`m1 eval`, `m1 report`).

budget.py      m1's budget protocol as pure functions over token ids (accounting, forcing, answer stage, reuse)
runner.py      BudgetRunner: the protocol on one vLLM engine with token-id prompts (per-sample budgets)
benchmarks.py  loaders for m1's evaluation sets (HuatuoGPT-o1 JSON, m1 JSONL) and any curation source format
config.py      the eval grid config (models x benchmarks x budgets x forcing counts)
sweep.py       `m1 eval`: the grid on Ray actors, cells scored with curation.answers and committed as they finish
report.py      the accuracy table and plots, and `m1 report RUN_DIR` (one self-contained HTML page)
demo.py        the small sweep the README's first command ends with (a tiny-model demonstration)
"""
