"""Config: YAML validated by pydantic; errors name the file and the bad key; secrets never accepted."""

from __future__ import annotations

import pytest

from curation.config import ConfigError, load_config, redacted, stable_hash


def write(tmp_path, text: str):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_valid_config_resolves_relative_paths(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            "sources:\n  - {name: medqa, format: medqa, path: data/medqa.jsonl}\ningest: {m1_shuffle: true}\n",
        )
    )
    assert cfg.sources[0].path == str(tmp_path / "data" / "medqa.jsonl")
    assert cfg.ingest.m1_shuffle is True
    assert stable_hash(redacted(cfg)) == stable_hash(redacted(load_config(tmp_path / "cfg.yaml")))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sources:\n  - {name: a, format: medqa, pth: x}\n", "sources.0.pth: Extra inputs are not permitted"),
        ("sources:\n  - {name: a, format: nope, path: x}\n", "sources.0.format: Input should be 'medqa'"),
        ("sources: []\n", "sources: List should have at least 1 item"),
        ("sources:\n  - {name: a, format: medqa, path: x}\ningest: {m1_shufle: true}\n", "ingest.m1_shufle"),
        (
            "sources:\n  - {name: a, format: medqa, path: x}\n  - {name: a, format: medqa, path: y}\n",
            "repeated: ['a']",
        ),
        ("sources:\n  - {name: a, format: medqa, path: x, mapping: {question: q}}\n", "only for format mcq"),
        ("- just a list\n", "top level must be a mapping"),
        ("sources: [\n", "not valid YAML"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_literal_secrets_are_refused_and_never_echoed(tmp_path):
    path = write(
        tmp_path,
        "sources:\n  - {name: a, format: medqa, path: x}\n"
        "engines:\n  teacher: {kind: openai, model: r1, base_url: http://x, api_key: sk-SECRET123}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "engines.teacher.api_key" in str(info.value)
    assert "sk-SECRET123" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_repeated_keys_are_refused_at_any_depth_with_their_line(tmp_path):
    path = write(
        tmp_path,
        "sources:\n  - name: a\n    format: mcq\n    path: x\n    mapping:\n      question: q\n      question: stem\n",
    )
    with pytest.raises(
        ConfigError, match=r"cfg.yaml:7: key 'question' appears twice in one mapping \(first at line 6\)"
    ):
        load_config(path)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    # `<<: *anchor` then an explicit key is YAML's way to override, not a repeated key.
    cfg = load_config(
        write(
            tmp_path,
            "sources:\n  - &base {name: a, format: medqa, path: x.jsonl}\n  - <<: *base\n    name: b\n",
        )
    )
    assert [s.name for s in cfg.sources] == ["a", "b"]


def test_pubmedqa_split_values_and_free_labels_elsewhere(tmp_path):
    for split in ("train", "test", "all"):
        load_config(
            write(tmp_path, f"sources:\n  - {{name: p, format: pubmedqa, path: x, split: {split}}}\n")
        )
    # Other formats keep any split label (it is only copied into the questions table).
    cfg = load_config(write(tmp_path, "sources:\n  - {name: m, format: medqa, path: x, split: dev}\n"))
    assert cfg.sources[0].split == "dev"


def test_validation_errors_never_echo_values(tmp_path):
    path = write(
        tmp_path,
        "sources:\n  - {name: a, format: medqa, path: x}\ningest: {max_question_chars: sk-abcdef123456}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "ingest.max_question_chars" in str(info.value) and "sk-abcdef123456" not in str(info.value)
