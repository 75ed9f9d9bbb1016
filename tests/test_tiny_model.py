"""The tiny nonsense model: deterministic, the right shape, a Qwen-style chat template, loads in transformers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from curation.devtools import tiny_model
from curation.devtools.tiny_model import build_tiny_model, builtin_corpus, sample_pool_corpus

SMALL_CORPUS = [
    f"Patient {i} has {d} treated with {m}." for i in range(40) for d, m in [("asthma", "albuterol")]
]


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_build_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = _files(build_tiny_model(tmp_path / "a", seed=3))
    second = _files(build_tiny_model(tmp_path / "b", seed=3))
    other_seed = _files(build_tiny_model(tmp_path / "c", seed=4))

    assert set(first) >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
        "README.md",
    }
    assert first == second
    assert other_seed["tokenizer.json"] == first["tokenizer.json"]  # the seed changes weights only
    assert other_seed["model.safetensors"] != first["model.safetensors"]


def test_shape_and_special_tokens(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    assert config["model_type"] == "qwen2"
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (128, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 1)
    assert config["head_dim"] == config["hidden_size"] // config["num_attention_heads"] == 64
    assert config["max_position_embeddings"] == 16384
    assert config["vocab_size"] == len(tokenizer) <= 4096
    assert config["eos_token_id"] == 2

    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert ids == [0, 1, 2]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 0
    # Special tokens are atomic even inside text (m1's `<|im_start|>think` relies on it).
    assert tokenizer("<|im_start|>think\n")["input_ids"][0] == 1
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, 0] and generation["pad_token_id"] == 0


def test_tokenizer_round_trips_and_matches_raw_tokenizer_json(tiny_model_dir: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    raw = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    text = "A 45-year-old man: BP 88/54 mm Hg, K+ 6.1 mEq/L; café? \\boxed{C}\n\nWait."
    ids = tokenizer(text)["input_ids"]
    # transformers rebuilds Qwen2's pre-tokenizer on load; the trained one must be the same pipeline.
    assert ids == raw.encode(text).ids
    assert tokenizer.decode(ids) == text


def test_chat_template_renders_chatml(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which drug?"}]

    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhich drug?<|im_end|>\n<|im_start|>assistant\n"
    )
    full = messages + [{"role": "assistant", "content": "Aspirin."}]
    assert tokenizer.apply_chat_template(full, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhich drug?<|im_end|>\n"
        "<|im_start|>assistant\nAspirin.<|im_end|>\n"
    )
    # The generation markers give an assistant-token mask covering exactly the answer and its <|im_end|>.
    encoded = tokenizer.apply_chat_template(full, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == "Aspirin.<|im_end|>"


def test_loads_in_transformers_and_generates(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Which is the most likely diagnosis?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    assert new_tokens.shape == (5,)
    assert int(new_tokens.max()) < len(tokenizer)
    assert isinstance(tokenizer.decode(new_tokens), str)


def test_the_model_says_it_is_nonsense(tiny_model_dir: Path) -> None:
    readme = (tiny_model_dir / "README.md").read_text()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    for text in (readme, config["m1_note"], tiny_model.__doc__ or ""):
        assert "nonsense" in text.lower()
    assert "random" in readme.lower()


def test_custom_corpus_and_vocab_size(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m", corpus=SMALL_CORPUS, vocab_size=600, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) <= 600
    assert len(tokenizer(" albuterol")["input_ids"]) == 1  # a frequent corpus word is one token
    with pytest.raises(ValueError, match="too small"):
        build_tiny_model(tmp_path / "x", corpus=SMALL_CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="empty"):
        build_tiny_model(tmp_path / "y", corpus=[])


def test_sample_pool_corpus_reads_jsonl_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "medqa.jsonl").write_text(
        json.dumps({"question": "Q one?", "options": {"A": "alpha", "B": "beta"}, "answer_idx": "A"}) + "\n"
    )
    pq.write_table(
        pa.Table.from_pylist([{"qtext": "Q two?", "answers": [{"aid": 1, "atext": "gamma"}]}]),
        tmp_path / "headqa.parquet",
    )
    (tmp_path / "notes.txt").write_text("ignored")

    texts = sample_pool_corpus(tmp_path)
    assert texts == ["Q two?", "gamma", "Q one?", "alpha", "beta", "A"]  # sorted by file name
    assert sample_pool_corpus(tmp_path / "missing") == []
    assert len(builtin_corpus()) >= 200


def test_cli_subcommand_builds_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="m1")
    tiny_model.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tiny-model", str(tmp_path / "cli"), "--vocab-size", "700", "--seed", "5"])

    assert args.func(args) == 0
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["vocab_size"] <= 700
    assert "nonsense" in capsys.readouterr().out
