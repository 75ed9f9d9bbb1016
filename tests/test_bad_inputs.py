"""Bad input, tried as a new user would, through every entry point.

Each case asserts the exit code, that the message names the file, row, key or request, that no traceback
reaches the terminal, and, where rows are read, that every row is in the output or in the rejects. Most cases run
in-process through ``curation.cli.main`` (an uncaught exception would fail the test, so no traceback can hide);
a few run the real ``m1`` entry point in a subprocess to prove what the terminal shows. Ray is started once per
session (``ray_local``) and only by the cases that read data; the others fail before Ray is needed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.cli import main
from curation.store.runstore import RunStore

KEY = "sk-live1234567890abcdefSECRET"


# ---------------------------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _log_handlers_outlive_capsys() -> Iterator[None]:
    """Ray Data binds its console log handler to the sys.stderr of the test that first runs a dataset (capsys's,
    closed after that test); point such handlers back at the real stderr so a later test's log line is not a
    "--- Logging error ---" traceback that no user would ever see."""
    yield
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                handler.stream = sys.__stderr__  # not setStream(): it would flush the closed stream


def medqa_row(i: int, **override: object) -> dict:
    row = {
        "question": f"Question number {i}: which drug treats condition {i}?",
        "options": {"A": f"drug a{i}", "B": f"drug b{i}", "C": f"drug c{i}", "D": f"drug d{i}"},
        "answer_idx": "B",
        "answer": f"drug b{i}",
    }
    row.update(override)
    return row


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(folder: Path, text: str, name: str = "cfg.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def source_config(folder: Path, path: str, fmt: str = "medqa", extra: str = "") -> Path:
    return write_config(folder, f"sources:\n  - name: pool\n    format: {fmt}\n    path: {path}\n{extra}")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def user_error(result: tuple[int, str, str], *needles: str, code: int = 2) -> str:
    """The command failed cleanly: exit code, no traceback, and every needle in the message."""
    exit_code, out, err = result
    assert exit_code == code, (exit_code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def m1(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "curation.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def accounted(run_dir: Path) -> tuple[int, int]:
    store = RunStore(str(run_dir), create=False)
    return store.read_table("questions").num_rows, store.read_table("rejects/ingest").num_rows


# ---------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        # A repeated key: YAML keeps the last silently; the first `path:` would be ignored.
        (
            "sources:\n  - name: a\n    format: medqa\n    path: first.jsonl\n    path: second.jsonl\n",
            [":5: key 'path' appears twice", "first at line 4"],
        ),
        (
            "sources:\n  - {name: a, format: medqa, path: x.jsonl}\ningest: {m1_shuffle: true}\n"
            "ingest: {m1_shuffle: false}\n",
            [":4: key 'ingest' appears twice"],
        ),
        ("sources: [\n", ["not valid YAML"]),
        ("- a list\n", ["top level must be a mapping"]),
        (
            "sources:\n  - {name: a, format: medqa, path: x}\nsource_typo: 1\n",
            ["source_typo", "Extra inputs"],
        ),
        (
            "sources:\n  - name: a\n    format: mcq\n    path: x\n    mapping: {qestion: stem}\n",
            ["sources.0.mapping.qestion: Extra inputs are not permitted"],
        ),
        (
            "sources:\n  - {name: a, format: mcq, path: x, mapping: {answer_type: idx}}\n",
            ["sources.0.mapping.answer_type"],
        ),
        (
            "sources:\n  - {name: p, format: pubmedqa, path: x, split: trian}\n",
            ["sources.0.split", "'trian'", "train", "test", "all"],
        ),
        ("sources:\n  - {name: a, format: medqa, path: x}\nray: {num_cpus: 0}\n", ["ray.num_cpus"]),
        (
            "sources:\n  - {name: a, format: medqa, path: x}\nray: {address: nonsense}\n",
            ["ray.address 'nonsense'"],
        ),
        ("sources:\n  - {name: 'a b', format: medqa, path: x}\n", ["sources.0.name"]),
    ],
    ids=[
        "yaml-repeated-path",
        "yaml-repeated-section",
        "yaml-syntax",
        "yaml-not-mapping",
        "unknown-key",
        "mcq-mapping-unknown-key",
        "mcq-mapping-bad-value",
        "pubmedqa-split-typo",
        "ray-zero-cpus",
        "ray-bad-address",
        "bad-source-name",
    ],
)
def test_config_mistakes_name_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needles: list[str]
) -> None:
    config = write_config(tmp_path, text)
    (tmp_path / "x").write_text("")
    err = user_error(cli(capsys, "curate", config, "--run-dir", tmp_path / "run"), str(config), *needles)
    assert "input_value" not in err
    assert not (tmp_path / "run").exists(), "a refused config creates no run directory"


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_config_file_missing_or_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = tmp_path / "cfg.yaml"
    if kind == "folder":
        path.mkdir()
    user_error(cli(capsys, "curate", path, "--run-dir", tmp_path / "run"), str(path))


def test_unknown_stage_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = source_config(tmp_path, "x.jsonl")
    user_error(
        cli(capsys, "curate", config, "--run-dir", tmp_path / "run", "--stages", "ingest,dedupe"),
        "unknown stage(s) ['dedupe']",
        "ingest",
    )


# ---------------------------------------------------------------------------------------------------- secrets


def test_a_key_pasted_as_api_key_env_is_never_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pydantic import ValidationError

    from curation.config import load_config
    from curation.engines.config import OpenAIEngineConfig

    with pytest.raises(ValidationError) as info:
        OpenAIEngineConfig(base_url="https://api.example.com/v1", api_key_env=KEY)
    assert KEY not in str(info.value) and "api_key_env" in str(info.value)
    with pytest.raises(ValidationError) as info:
        OpenAIEngineConfig(base_url="https://api.example.com/v1", api_key_env="sk_live_abcdefghijkl")
    assert "abcdefghijkl" not in str(info.value)
    # Through the config: every engine is validated when the config loads, used by a stage or not.
    config = write_config(
        tmp_path,
        "sources:\n  - {name: a, format: medqa, path: x}\n"
        f"engines:\n  teacher: {{kind: openai, base_url: 'https://api.example.com/v1', api_key_env: '{KEY}'}}\n",
    )
    with pytest.raises(Exception) as info:
        load_config(config)
    assert KEY not in str(info.value) and "engines.teacher.openai.api_key_env" in str(info.value)


@pytest.mark.parametrize(
    "entry",
    [
        "engines:\n  t: {kind: openai, base_url: 'https://x/v1', api_key: KEY}\n",
        "engines:\n  t: {kind: openai, base_url: 'https://user:KEY@x', max_concurrency: KEY}\n",
        "engines:\n  t: {kind: openai, base_url: 'ftp://KEY'}\n",
        "sources_extra: KEY\n",
    ],
    ids=["literal-api-key", "wrong-type", "bad-url", "unknown-key"],
)
def test_no_error_echoes_a_key_whatever_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: str
) -> None:
    from curation.config import ConfigError, load_config

    config = write_config(
        tmp_path, "sources:\n  - {name: a, format: medqa, path: x}\n" + entry.replace("KEY", KEY)
    )
    try:
        cfg = load_config(config)
        cfg.engine("t")
        message = ""
    except ConfigError as exc:
        message = str(exc)
    assert message, "the config must be refused"
    assert KEY not in message and "abcdef" not in message


def test_redaction_of_key_shapes() -> None:
    from curation.errors import redact_secrets

    token = "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH"  # a Hugging Face token: hf_ + 34 alphanumerics
    text = f"x {KEY} Bearer abcdefgh12345678 api_key=hunter2hunter2 {token}"
    scrubbed = redact_secrets(text)
    assert all(s not in scrubbed for s in (KEY, "abcdefgh12345678", "hunter2hunter2", token))
    # More both ways in tests/test_secrets.py (an ordinary folder named hf_cache is not a token).
    plain = "/tmp/run/tables/questions/v-20260101T000000-abcd1234 qid 3f2a9c1d0b7e4f5a6b7c8d9e0f1a2b3c"
    assert redact_secrets(plain) == plain  # paths and hex digests are not keys


# ---------------------------------------------------------------------------------------------------- data


def test_repeated_option_key_in_a_jsonl_row(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "pool.jsonl"
    lines = [json.dumps(medqa_row(i)) for i in range(3)]
    lines.insert(1, '{"question": "Q?", "options": {"A": "one", "A": "two", "B": "x"}, "answer_idx": "A"}')
    data.write_text("\n".join(lines) + "\n")
    user_error(
        cli(capsys, "curate", source_config(tmp_path, data), "--run-dir", tmp_path / "run"),
        f"{data}:2: key 'A' appears twice",
    )
    assert not (tmp_path / "run").exists(), "a failed first run leaves no run directory behind"


def test_repeated_id_in_a_json_dict_of_rows(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "rows.json"
    data.write_text(
        "{\n"
        f'  "r1": {json.dumps(medqa_row(1))},\n'
        f'  "r2": {json.dumps(medqa_row(2))},\n'
        f'  "r1": {json.dumps(medqa_row(3))}\n'
        "}\n"
    )
    user_error(
        cli(capsys, "curate", source_config(tmp_path, data), "--run-dir", tmp_path / "run"),
        f"{data}:4: key 'r1' appears twice",
        "first at line 2",
    )


def test_repeated_key_in_a_pretty_printed_json_array(tmp_path: Path) -> None:
    from curation.readers import read_chunk
    from curation.source_plan import IngestError, plan_source

    data = tmp_path / "rows.json"
    data.write_text(
        '[\n  {\n    "question": "Q?",\n    "options": {\n      "A": "x",\n      "A": "y"\n    }\n  }\n]\n'
    )
    with pytest.raises(
        IngestError, match=r"rows.json:6: key 'A' appears twice in one JSON object \(first at line 5\)"
    ):
        [r for s in plan_source("s", str(data), 10) for r in read_chunk(s)]


def test_repeated_key_inside_a_csv_cell_is_a_row_reject(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "pool.csv"
    data.write_text(
        "question,options,answer\n"
        'Q one?,"{""A"": ""x"", ""B"": ""y""}",A\n'
        'Q two?,"{""A"": ""x"", ""A"": ""y"", ""B"": ""z""}",B\n'
    )
    config = source_config(
        tmp_path, data, "mcq", "    mapping: {question: question, options: options, answer: answer}\n"
    )
    code, out, err = cli(capsys, "curate", config, "--run-dir", tmp_path / "run")
    assert code == 0, err
    assert accounted(tmp_path / "run") == (1, 1)
    reject = RunStore(str(tmp_path / "run")).read_table("rejects/ingest").to_pylist()[0]
    assert reject["source_ref"] == "pool.csv:3" and reject["reason"] == "bad_field"
    assert "'options' repeats the key 'A'" in reject["detail"]


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        (
            "missing-column",
            ["source 'pool'", "none of its 3 rows", "missing_question x3", "field 'question' is missing"],
        ),
        ("mapping-to-absent-fields", ["source 'pool'", "none of its 3 rows", "'stem' is missing"]),
        (
            "mapping-context-absent",
            ["mapping.context 'passage' is missing", "every one of its 3 accepted rows"],
        ),
        ("wrong-parquet-schema", ["source 'pool'", "none of its 2 rows", "missing_question"]),
        ("empty-file", ["source 'pool'", "holds no rows at all"]),
        ("blank-lines-only", ["source 'pool'", "holds no rows at all"]),
        ("all-in-other-split", ["source 'pool'", "not_in_split"]),
    ],
)
def test_a_source_that_yields_nothing_is_an_error(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, needles: list[str]
) -> None:
    fmt, extra = "medqa", ""
    if case == "missing-column":
        data = write_jsonl(
            tmp_path / "pool.jsonl", [{"stem": f"Q{i}?", "options": {"A": "a", "B": "b"}} for i in range(3)]
        )
    elif case == "mapping-to-absent-fields":
        data = write_jsonl(tmp_path / "pool.jsonl", [medqa_row(i) for i in range(3)])
        fmt, extra = "mcq", "    mapping: {question: stem, options: options, answer: answer_idx}\n"
    elif case == "mapping-context-absent":
        data = write_jsonl(tmp_path / "pool.jsonl", [medqa_row(i) for i in range(3)])
        fmt = "mcq"
        extra = "    mapping: {question: question, options: options, answer: answer_idx, context: passage}\n"
    elif case == "wrong-parquet-schema":
        data = tmp_path / "pool.parquet"
        pq.write_table(pa.table({"id": [1, 2], "text": ["a", "b"]}), data)
        fmt = "medmcqa"
    elif case == "empty-file":
        data = tmp_path / "pool.jsonl"
        data.write_text("")
    elif case == "blank-lines-only":
        data = tmp_path / "pool.jsonl"
        data.write_text("\n\n  \n")
    else:  # one PubMedQA row: m1's seed-0 split puts it in the test half, and this source keeps train
        row = {
            "pubid": 1,
            "question": "Does it work?",
            "context": {"contexts": ["Some background."]},
            "final_decision": "yes",
        }
        data = write_jsonl(tmp_path / "pool.jsonl", [row])
        fmt = "pubmedqa"
    config = source_config(tmp_path, data, fmt, extra)
    user_error(cli(capsys, "curate", config, "--run-dir", tmp_path / "run"), *needles)
    assert not (tmp_path / "run").exists()


def test_an_empty_folder_is_an_error_like_an_empty_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pool").mkdir()
    user_error(
        cli(capsys, "curate", source_config(tmp_path, tmp_path / "pool"), "--run-dir", tmp_path / "run"),
        "pool: folder holds no",
    )


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        (
            "unterminated.csv",
            'question,options,answer\nQ1?,"[""a"", ""b""]",a\nQ2?,"[""a"", ""b""],a\nQ3?,"[""a"", ""b""]",a\n',
            [":3: unbalanced double quote"],
        ),
        (
            "deep.jsonl",
            json.dumps(medqa_row(1)) + "\n" + '{"question": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
            [":2: the JSON is nested too deeply"],
        ),
        ("broken.jsonl", json.dumps(medqa_row(1)) + '\n{"question": "Q2?", "opt\n', [":2: not valid JSON"]),
        ("notes.txt", "hello", ["unknown file type '.txt'"]),
    ],
    ids=["csv-unterminated-quote", "deeply-nested-json", "truncated-jsonl", "unknown-suffix"],
)
def test_unreadable_files_name_file_and_line(
    ray_local: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str,
    needles: list[str],
) -> None:
    data = tmp_path / name
    data.write_text(content)
    fmt, extra = "medqa", ""
    if name.endswith(".csv"):
        fmt, extra = (
            "mcq",
            "    mapping: {question: question, options: options, answer: answer, answer_type: text}\n",
        )
    user_error(
        cli(capsys, "curate", source_config(tmp_path, data, fmt, extra), "--run-dir", tmp_path / "run"),
        name,
        *needles,
    )


def test_parquet_with_a_repeated_column(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "pool.parquet"
    table = pa.Table.from_arrays(
        [pa.array(["Q?"]), pa.array(["x"]), pa.array(["y"])], names=["question", "opa", "opa"]
    )
    pq.write_table(table, data)
    user_error(
        cli(capsys, "curate", source_config(tmp_path, data, "medmcqa"), "--run-dir", tmp_path / "run"),
        "pool.parquet",
        "['opa'] appear more than once",
    )


def test_permission_error_on_an_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_jsonl(tmp_path / "pool.jsonl", [medqa_row(1), medqa_row(2)])
    if os.geteuid() == 0:  # root reads any file: make the open itself fail as it does for other users
        import builtins

        real_open = builtins.open

        def deny(file, *args, **kwargs):  # type: ignore[no-untyped-def]
            if str(file) == str(data):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", deny)
    else:
        data.chmod(0)
    try:
        user_error(
            cli(capsys, "curate", source_config(tmp_path, data), "--run-dir", tmp_path / "run"),
            f"{data}: cannot read (Permission denied)",
        )
    finally:
        data.chmod(0o644)


def test_good_and_bad_rows_are_all_accounted(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [medqa_row(i) for i in range(5)]
    rows[1] = medqa_row(1, question="")
    rows[3] = medqa_row(3, answer_idx="Z")
    data = write_jsonl(tmp_path / "pool.jsonl", rows)
    code, out, err = cli(capsys, "curate", source_config(tmp_path, data), "--run-dir", tmp_path / "run")
    assert code == 0, err
    assert accounted(tmp_path / "run") == (3, 2)
    assert "missing_question" in out and "answer_not_in_options" in out


# ---------------------------------------------------------------------------------------------------- run dirs


@pytest.fixture
def finished_run(ray_local: None, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A committed run: (config, data file, run dir)."""
    data = write_jsonl(tmp_path / "data" / "pool.jsonl", [medqa_row(i) for i in range(4)])
    config = source_config(tmp_path / "cfg", "../data/pool.jsonl")
    run = tmp_path / "run"
    assert main(["curate", str(config), "--run-dir", str(run)]) == 0
    return config, data, run


def test_a_different_config_on_a_committed_run_is_refused_then_forced(
    finished_run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, data, run = finished_run
    capsys.readouterr()
    before = (run / "manifest.json").read_bytes()
    other = source_config(config.parent, "../data/pool.jsonl", extra="ingest: {m1_shuffle: true}\n")
    user_error(
        cli(capsys, "curate", other, "--run-dir", run),
        "ingest: changed ingest.m1_shuffle",
        "replaces tables questions, rejects/ingest",
        "--force",
    )
    assert (run / "manifest.json").read_bytes() == before, "a refused run writes nothing"
    code, out, err = cli(capsys, "curate", other, "--run-dir", run, "--force")
    assert code == 0, err
    assert RunStore(str(run)).manifest["config"]["ingest"]["m1_shuffle"] is True


def test_a_failing_run_over_a_committed_run_leaves_its_manifest(
    finished_run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, data, run = finished_run
    before = (run / "manifest.json").read_bytes()
    data.write_text(json.dumps(medqa_row(1)) + "\n{not json\n")
    user_error(cli(capsys, "curate", config, "--run-dir", run), "changed files.pool")
    user_error(cli(capsys, "curate", config, "--run-dir", run, "--force"), "pool.jsonl:2: not valid JSON")
    assert (run / "manifest.json").read_bytes() == before
    assert RunStore(str(run)).read_table("questions").num_rows == 4


def test_the_same_files_elsewhere_resume_and_inputs_have_no_stale_entries(
    finished_run: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, data, run = finished_run
    first = RunStore(str(run)).manifest
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "data", moved / "data")
    shutil.copytree(config.parent, moved / "cfg")
    code, out, err = cli(capsys, "curate", moved / "cfg" / "cfg.yaml", "--run-dir", run)
    assert code == 0 and "[ingest] complete for config hash" in out, (out, err)
    assert RunStore(str(run)).manifest["config_hash"] == first["config_hash"]
    # Another pool replaces the first (with --force): the manifest's inputs name only the files now used.
    write_jsonl(moved / "data" / "other.jsonl", [medqa_row(i) for i in range(2)])
    other = write_config(
        moved / "cfg", "sources:\n  - {name: other, format: medqa, path: ../data/other.jsonl}\n"
    )
    assert cli(capsys, "curate", other, "--run-dir", run, "--force")[0] == 0
    inputs = RunStore(str(run)).manifest["inputs"]
    assert list(inputs) == ["other"] and list(inputs["other"]) == ["other.jsonl"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["sql", "{missing}", "SELECT 1"], ["does not exist"]),
        (["sql", "{empty_dir}", "SELECT 1"], ["not a run directory"]),
        (["sql", "{run}", ""], ["query is empty"]),
        (["sql", "{run}", "   "], ["query is empty"]),
        (["sql", "{run}", "SELECT nope FROM questions"], ["nope"]),
        (["sql", "{truncated}", "SELECT 1"], ["manifest.json:", "not valid JSON", "truncated"]),
        (["runs", "{missing}"], ["no such folder"]),
        (["curate", "{config}", "--run-dir", "{a_file}"], ["is a file, not a directory"]),
        (["curate", "{config}", "--run-dir", "foo://bucket/run"], ["unknown filesystem scheme 'foo://'"]),
    ],
    ids=[
        "sql-missing-dir",
        "sql-not-a-run",
        "sql-empty-query",
        "sql-blank-query",
        "sql-bad-column",
        "sql-truncated-manifest",
        "runs-missing-root",
        "run-dir-is-a-file",
        "run-dir-unknown-scheme",
    ],
)
def test_run_directory_mistakes(
    finished_run: tuple[Path, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    needles: list[str],
) -> None:
    config, _, run = finished_run
    truncated = tmp_path / "truncated"
    shutil.copytree(run, truncated)
    text = (truncated / "manifest.json").read_text()
    (truncated / "manifest.json").write_text(text[: len(text) // 2])
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    names = {
        "missing": tmp_path / "missing",
        "empty_dir": tmp_path / "empty_dir",
        "run": run,
        "truncated": truncated,
        "config": config,
        "a_file": tmp_path / "a_file",
    }
    capsys.readouterr()
    user_error(cli(capsys, *[a.format(**names) for a in args]), *needles)


def test_deleted_table_files_leave_the_rest_queryable(
    finished_run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, run = finished_run
    entry = RunStore(str(run)).manifest["tables"]["rejects/ingest"]
    shutil.rmtree(run / entry["path"])
    capsys.readouterr()
    code, out, err = cli(capsys, "sql", run, "SELECT count(*) AS n FROM questions", "--format", "json")
    assert code == 0 and json.loads(out) == {"n": 4}
    assert "table 'rejects/ingest'" in err and "is MISSING: no Parquet file" in err and "left out" in err
    user_error(cli(capsys, "sql", run, "SELECT * FROM rejects_ingest"), "rejects_ingest", "was left out")
    code, out, err = cli(capsys, "runs", run.parent)
    assert code == 0 and "MISSING: no Parquet file" in out


def test_damaged_table_files_name_the_table_and_curate_repairs_lost_ones(
    finished_run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, run = finished_run
    entry = RunStore(str(run)).manifest["tables"]["questions"]
    part = next((run / entry["path"]).glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:20])
    capsys.readouterr()
    # The damaged table is named with what is wrong and left out; the other tables still answer.
    code, out, err = cli(capsys, "sql", run, "SELECT count(*) AS n FROM rejects", "--format", "json")
    assert code == 0 and json.loads(out) == {"n": 0}
    assert (
        "table 'questions'" in err and "is CORRUPT: not a readable Parquet file" in err and "--force" in err
    )
    user_error(cli(capsys, "sql", run, "SELECT * FROM questions"), "questions", "was left out")
    # Files deleted by hand: the stage is no longer complete, and resuming rebuilds it (same inputs: no --force).
    shutil.rmtree(run / entry["path"])
    code, out, err = cli(capsys, "curate", config, "--run-dir", run)
    assert code == 0 and "[ingest] the files of questions are gone since it ran; rerunning" in out, err
    assert accounted(run) == (4, 0)


def test_runs_lists_the_good_runs_and_flags_a_corrupt_one(
    finished_run: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, run = finished_run
    bad = tmp_path / "zz-corrupt"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"format": 1, "tables": {')
    capsys.readouterr()
    code, out, err = cli(capsys, "runs", tmp_path, "--format", "json")
    assert code == 0 and "Traceback" not in err
    rows = {Path(r["run"]).name: r for r in map(json.loads, out.splitlines())}
    assert rows["run"]["tables"] == "questions=4, rejects/ingest=0"
    assert rows["zz-corrupt"]["stages"] == "CORRUPT" and "manifest.json:1" in rows["zz-corrupt"]["tables"]
    assert "1 run(s) flagged" in err
    code, out, err = cli(capsys, "runs", tmp_path)  # the table for people
    assert code == 0 and "run(s) flagged CORRUPT" in err and "Traceback" not in err


def test_a_quote_in_the_run_dir_path(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "pool.jsonl", [medqa_row(i) for i in range(2)])
    run = tmp_path / 'it\'s "here"'
    code, out, err = cli(capsys, "curate", source_config(tmp_path, data), "--run-dir", run)
    assert code == 0, err
    code, out, err = cli(capsys, "sql", run, "SELECT count(*) AS n FROM questions", "--format", "json")
    assert code == 0 and json.loads(out) == {"n": 2}


def test_unreachable_s3_run_dir_fails_in_seconds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = source_config(tmp_path, "x.jsonl")
    uri = "s3://bucket/run?endpoint_override=127.0.0.1:1&scheme=http&region=us-east-1"
    started = time.monotonic()
    user_error(cli(capsys, "curate", config, "--run-dir", uri), "cannot open or create it", "bucket")
    assert time.monotonic() - started < 60


# ---------------------------------------------------------------------------------------------------- ledger-import


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        ("missing.jsonl", None, ["missing.jsonl: no such file or folder"]),
        ("garbage.jsonl", "\x00\x01garbage\n", ["garbage.jsonl: record 1 (line 1)", "not valid JSON"]),
        (
            "columns.jsonl",
            '{"question": "Q", "text": "A"}\n',
            ["columns.jsonl: missing column(s)", "distilled_answer_string", "'question', 'text'"],
        ),
        (
            "truncated.jsonl",
            '{"prompt": "Q1", "distilled_answer_string": "A", "reasoning": "r"}\n{"prompt": "Q2", "distil',
            ["truncated.jsonl: record 2"],
        ),
        (
            "dup.jsonl",
            '{"prompt": "Q1", "prompt": "Q2", "distilled_answer_string": "A", "reasoning": "r"}\n',
            ["dup.jsonl: record 1", "specified twice"],
        ),
        (
            "array_dup.json",
            '[{"prompt": "Q1", "prompt": "Q2", "distilled_answer_string": "A", "reasoning": "r"}]',
            ["array_dup.json: a record repeats the key 'prompt'"],
        ),
        (
            "deep.jsonl",
            '{"prompt": "Q1", "distilled_answer_string": "A", "reasoning": "r"}\n{"prompt": '
            + "[" * 100_000
            + "]" * 100_000
            + "}\n",
            ["deep.jsonl: record 2 (line 2): the JSON is nested too deeply"],
        ),
        (
            "type1.jsonl",
            '{"prompt": 7, "distilled_answer_string": "A", "reasoning": "r"}\n'
            '{"prompt": "Q2", "distilled_answer_string": "A", "reasoning": "r"}\n',
            ["type1.jsonl: record 1: column 'prompt' is a number, expected text"],
        ),
        (
            "type3.jsonl",
            '{"prompt": "Q1", "distilled_answer_string": "A", "reasoning": "r"}\n\n'
            '{"prompt": "Q2", "distilled_answer_string": "A", "reasoning": "r"}\n'
            '{"prompt": "Q3", "distilled_answer_string": ["A"], "reasoning": "r"}\n',
            ["type3.jsonl: record 3: column 'distilled_answer_string' is a list, expected text"],
        ),
        ("traces.txt", "x", ["traces.txt: expected .jsonl"]),
        ("bad.parquet", "not parquet", ["bad.parquet: not a readable Parquet"]),
    ],
)
def test_ledger_import_file_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str | None, needles: list[str]
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    user_error(cli(capsys, "ledger-import", path, "--ledger", tmp_path / "ledger", "--model", "m"), *needles)
    assert not (tmp_path / "ledger").exists() or not list((tmp_path / "ledger").glob("*.parquet"))


def test_ledger_import_reads_a_json_array(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "traces.json"
    path.write_text(
        json.dumps([{"prompt": f"Q{i}", "distilled_answer_string": "A", "reasoning": "r"} for i in range(3)])
    )
    code, out, err = cli(capsys, "ledger-import", path, "--ledger", tmp_path / "ledger", "--model", "m")
    assert code == 0 and "3 responses" in out, err
    user_error(
        cli(
            capsys, "ledger-import", path, "--ledger", tmp_path / "ledger", "--model", "m", "--params", "{bad"
        ),
        "--params is not JSON",
    )


def test_ledger_import_into_a_file_and_runs_on_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_text('{"prompt": "Q", "distilled_answer_string": "A", "reasoning": "r"}\n')
    (tmp_path / "afile").write_text("x")
    user_error(
        cli(capsys, "ledger-import", path, "--ledger", tmp_path / "afile", "--model", "m"),
        f"--ledger {tmp_path / 'afile'}: cannot open or create the ledger",
    )
    user_error(cli(capsys, "runs", tmp_path / "afile"), "afile: is a file, not a folder")


# ---------------------------------------------------------------------------------------------------- small tools


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["export", "{tmp}/nope", "--out", "{tmp}/o.parquet"], ["run directory", "nope", "does not exist"]),
        (["rehearse", "--port", "1", "--pool", "{tmp}/nope"], ["nope: no such file or folder"]),
        (["rehearse", "--port", "1", "--config", "{tmp}/dup.yaml"], ["dup.yaml"]),
    ],
    ids=["export-missing-run", "rehearse-missing-pool", "rehearse-bad-config"],
)
def test_other_commands_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needles: list[str]
) -> None:
    (tmp_path / "dup.yaml").write_text("faults: [\n")
    user_error(cli(capsys, *[a.format(tmp=tmp_path) for a in args]), *needles)


@pytest.mark.parametrize("flag", ["--max-rows", "--max-width"])
def test_sql_display_limits_must_be_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sql", str(tmp_path), "SELECT 1", flag, "-1"])
    assert info.value.code == 2 and f"{flag}: must be at least 1, got -1" in capsys.readouterr().err


def test_synth_rows_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["synth", str(tmp_path / "out"), "--rows", "-5"])
    assert info.value.code == 2 and "--rows: must be at least 1, got -5" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tiny_model_into_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "model"
    target.write_text("x")
    user_error(cli(capsys, "tiny-model", target), f"{target}: exists and is a file")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["tiny-model", "{tmp}/m", "--vocab-size", "10"],
            ["--vocab-size: must be between 512 and 262144", "got 10"],
        ),
        (
            ["tiny-model", "{tmp}/m", "--vocab-size", "-1"],
            ["--vocab-size: must be between 512 and 262144", "got -1"],
        ),
        (
            ["synth", "{tmp}/m", "--rows", "5", "--dup-exact-frac", "2"],
            ["--dup-exact-frac: must be a share", "0 and 1"],
        ),
        (
            ["synth", "{tmp}/m", "--rows", "5", "--dup-near-frac", "-0.5"],
            ["--dup-near-frac: must be a share"],
        ),
        (
            ["synth", "{tmp}/m", "--rows", "5", "--dup-exact-frac", "nan"],
            ["--dup-exact-frac: must be a share"],
        ),
        (["synth", "", "--rows", "5"], ["out_dir: must name a file or folder"]),
        (["export", "{tmp}/run", "--out", " "], ["--out: must name a file or folder"]),
        (["report", "{tmp}/run", "--out", ""], ["--out: must name a file or folder"]),
        (["ledger-import", "{tmp}/t.jsonl", "--ledger", "", "--model", "m"], ["--ledger: must name"]),
    ],
    ids=[
        "vocab-10",
        "vocab-negative",
        "synth-exact-2",
        "synth-near-negative",
        "synth-nan",
        "synth-empty-out",
        "export-blank-out",
        "report-empty-out",
        "ledger-import-empty-ledger",
    ],
)
def test_bad_arguments_are_usage_errors_with_the_allowed_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needles: list[str]
) -> None:
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as info:
        main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert sorted(os.listdir(tmp_path)) == before, "nothing was written"


def test_synth_duplicate_shares_must_add_up_to_at_most_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["synth", tmp_path / "out", "--rows", "5", "--dup-exact-frac", "0.6", "--dup-near-frac", "0.5"]
    user_error(cli(capsys, *args), "0.6 + --dup-near-frac 0.5 = 1.1", "at most 1")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("run_dir", ["", "   "], ids=["empty", "blank"])
@pytest.mark.parametrize("command", ["curate", "eval", "demo", "export", "report"])
def test_an_empty_run_dir_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    run_dir: str,
) -> None:
    """Was: `m1 curate cfg --run-dir ""` exited 0 with the run written into the current folder."""
    config = source_config(tmp_path, "x.jsonl")
    args = {
        "curate": ["curate", config, "--run-dir", run_dir],
        "eval": ["eval", config, "--run-dir", run_dir],
        "demo": ["demo", "--run-dir", run_dir],
        "export": ["export", run_dir, "--out", tmp_path / "o.jsonl"],
        "report": ["report", run_dir],
    }[command]
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    user_error(cli(capsys, *args), "--run-dir is empty")
    assert sorted(os.listdir(tmp_path)) == before, "nothing was written"


def test_sft_run_dir_must_not_be_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(
        tmp_path, "name: x\nrun_dir: ''\ndata: {table: curated}\nmodel: {path: Org/model}\n", "sft.yaml"
    )
    user_error(cli(capsys, "sft", config), "sft.yaml: run_dir: is empty")


def _eval_config(folder: Path, model: str, bench: str = "bench.jsonl") -> Path:
    write_jsonl(folder / "bench.jsonl", [medqa_row(i) for i in range(2)])
    return write_config(
        folder,
        f"models:\n  - {{name: m, model: '{model}'}}\n"
        f"benchmarks:\n  - {{name: b, path: {bench}, format: medqa, split: test}}\nbudgets: [8]\n",
        "eval.yaml",
    )


def _sft_config(folder: Path, model: str) -> Path:
    return write_config(
        folder,
        f"name: x\nrun_dir: run\ndata: {{table: curated}}\nmodel: {{path: '{model}'}}\n"
        "resources: {num_workers: 1}\ntrain: {global_batch_size: 1}\n",
        "sft.yaml",
    )


@pytest.mark.parametrize("command", ["sft", "eval"])
@pytest.mark.parametrize(
    ("model", "needles"),
    [
        ("./no/such/model", ["no such folder"]),
        ("/definitely/not/here", ["'/definitely/not/here': no such folder"]),
        ("a/b/c", ["no such folder (and not a hub id of the form org/name)"]),
        (
            "Org/not-in-the-cache",
            ["'Org/not-in-the-cache'", "HF_HUB_OFFLINE is set", "cache does not hold it"],
        ),
        ("FILE", ["is a file, not a model folder"]),
        ("EMPTYDIR", ["is not a Hugging Face model folder (no config.json in it)"]),
    ],
    ids=["relative-missing", "absolute-missing", "three-parts", "hub-id-offline", "a-file", "no-config-json"],
)
def test_a_model_path_that_cannot_load_is_named_before_any_worker_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    model: str,
    needles: list[str],
) -> None:
    """Was: tracebacks from inside Ray workers (OSError: Repo id must be..., HFValidationError)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "weights.bin").write_text("x")
    (tmp_path / "empty").mkdir()
    model = {"FILE": str(tmp_path / "weights.bin"), "EMPTYDIR": str(tmp_path / "empty")}.get(model, model)
    if command == "sft":
        config = _sft_config(tmp_path, model)
        result, key = cli(capsys, "sft", config), "model.path"
    else:
        config = _eval_config(tmp_path, model)
        result, key = cli(capsys, "eval", config, "--run-dir", tmp_path / "run"), "models.0.model (m)"
    user_error(result, str(config), key, *needles)
    assert not (tmp_path / "run").exists()


def test_model_check_accepts_a_model_folder_and_an_online_hub_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from curation.modelpath import check_model_path

    (tmp_path / "config.json").write_text("{}")
    check_model_path(str(tmp_path), "model.path")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    check_model_path("Qwen/Qwen2.5-7B-Instruct", "model.path")  # left to transformers/vLLM with hub access


def test_a_failing_eval_leaves_no_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: the run directory was created before the benchmarks were read, and stayed behind empty."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    config = _eval_config(tmp_path, str(model), bench="missing.jsonl")
    user_error(cli(capsys, "eval", config, "--run-dir", tmp_path / "run"), "missing.jsonl")
    assert not (tmp_path / "run").exists()


def test_an_unreadable_input_folder_says_permission_denied(tmp_path: Path) -> None:
    """Was: "folder holds no .csv, .json, ... files". Root reads any folder, so the command runs as `nobody`
    (setpriv) on a folder that user may not list; where that is impossible, the listing error is simulated."""
    import shutil as sh
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="m1-perm-", dir="/tmp"))
    try:
        root.chmod(0o777)
        pool = root / "pool"
        pool.mkdir()
        write_jsonl(pool / "a.jsonl", [medqa_row(1)])
        pool.chmod(0o700)  # owner only: `nobody` may not list it
        config = source_config(root, pool)
        config.chmod(0o644)
        setpriv = sh.which("setpriv")
        if os.geteuid() == 0 and setpriv:
            command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        elif os.geteuid() != 0:
            pool.chmod(0)
            command = []
        else:
            pytest.skip("running as root without setpriv: no user to deny the listing to")
        out = subprocess.run(
            [
                *command,
                sys.executable,
                "-m",
                "curation.cli",
                "curate",
                str(config),
                "--run-dir",
                str(root / "run"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HOME": str(root), "RAY_ADDRESS": ""},
            cwd=root,
        )
        assert out.returncode == 2, out.stderr
        assert f"{pool}: permission denied" in out.stderr and "holds no" not in out.stderr
        assert "Traceback" not in out.stderr
        assert not (root / "run").exists()
    finally:
        pool.chmod(0o755)
        sh.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- real m1


def test_real_m1_prints_no_traceback(tmp_path: Path) -> None:
    """The terminal, as the user sees it, for a few of the mistakes above."""
    dup = source_config(tmp_path, "x.jsonl", extra="ingest: {m1_shuffle: true}\ningest: {}\n")
    out = m1("curate", dup, "--run-dir", tmp_path / "run")
    assert (
        out.returncode == 2 and "key 'ingest' appears twice" in out.stderr and "Traceback" not in out.stderr
    )
    out = m1("sql", tmp_path / "missing", "SELECT 1")
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "g.jsonl").write_text("garbage")
    out = m1("ledger-import", tmp_path / "g.jsonl", "--ledger", tmp_path / "l", "--model", "m")
    assert out.returncode == 2 and "g.jsonl: record 1" in out.stderr and "Traceback" not in out.stderr
    out = m1("synth", tmp_path / "s", "--rows", "-5")
    assert out.returncode == 2 and "at least 1" in out.stderr and "Traceback" not in out.stderr


def test_real_m1_unreachable_ray_fails_in_seconds(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pool.jsonl", [medqa_row(1)])
    config = source_config(tmp_path, data, extra="ray: {address: '127.0.0.1:1', connect_timeout_s: 2}\n")
    started = time.monotonic()
    out = m1("curate", config, "--run-dir", tmp_path / "run", timeout=60, env={"RAY_ADDRESS": ""})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in out.stderr and "ray status" in out.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists()


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP port that accepts connections and never answers (not a Ray head)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for c in conns:
        c.close()
    server.close()


def test_real_m1_stops_on_sigterm_while_connecting(tmp_path: Path, silent_listener: str) -> None:
    import signal

    data = write_jsonl(tmp_path / "pool.jsonl", [medqa_row(1)])
    config = source_config(tmp_path, data, extra=f"ray: {{address: '{silent_listener}'}}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "curation.cli", "curate", str(config), "--run-dir", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "run").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # the run dir appears just before the stages (and ray.init) start
        time.sleep(3)  # inside ray.init by now
        assert proc.poll() is None, proc.communicate()
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - sent < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    leftovers = (
        [p for p in (tmp_path / "run").rglob("*") if p.is_file()] if (tmp_path / "run").exists() else []
    )
    assert leftovers == [], "the interrupted first run wrote nothing"


@pytest.mark.slow
def test_real_m1_gives_up_on_a_listener_that_is_not_ray(tmp_path: Path, silent_listener: str) -> None:
    data = write_jsonl(tmp_path / "pool.jsonl", [medqa_row(1)])
    config = source_config(
        tmp_path, data, extra=f"ray: {{address: '{silent_listener}', connect_timeout_s: 2}}\n"
    )
    started = time.monotonic()
    out = m1("curate", config, "--run-dir", tmp_path / "run", timeout=120, env={"RAY_ADDRESS": ""})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"cannot connect to the Ray cluster at '{silent_listener}' (no answer within 6 s)" in out.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run").exists(), "the watchdog's exit leaves no empty run directory behind"


def _project_models() -> list[type]:
    """Every pydantic model class defined in the project's packages (imported here, so none is missed)."""
    import importlib
    import pkgutil

    from pydantic import BaseModel

    found: dict[str, type] = {}
    for package in ("curation", "evaluation", "sft"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, BaseModel)
                    and obj.__module__.startswith(("curation", "evaluation", "sft"))
                ):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def test_every_config_model_hides_its_input_in_errors() -> None:
    """Python API users build configs directly: pydantic's error text must not carry a pasted key."""
    models = _project_models()
    assert len(models) >= 20  # the walk really found the config classes
    leaky = [m.__qualname__ for m in models if not m.model_config.get("hide_input_in_errors")]
    assert leaky == []


@pytest.mark.parametrize(
    "build",
    [
        lambda: __import__("curation.engines.config", fromlist=["x"]).OpenAIEngineConfig(
            base_url="http://127.0.0.1:1/v1", model="m", api_key_env=KEY
        ),
        lambda: __import__("curation.engines.vllm_engine", fromlist=["x"]).VLLMEngineConfig(
            model="x", api_key=KEY
        ),
        lambda: __import__("curation.devtools.rehearse", fromlist=["x"]).RehearsalConfig(port=KEY),
        lambda: __import__("curation.devtools.rehearse", fromlist=["x"]).FaultRates(rate_limit=KEY),
    ],
    ids=["openai-api_key_env", "vllm-unknown-field", "rehearsal-port", "fault-rate"],
)
def test_python_api_errors_never_echo_a_key(build) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        build()
    assert KEY not in str(info.value)
