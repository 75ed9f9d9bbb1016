"""m1's SFT format, the assistant-only mask (token by token), packing boundaries and the plan: no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.devtools.tiny_model import IM_START_ID
from sft.config import SFTConfig, load_sft_config
from sft.data import make_plan, packed_lengths
from sft.format import (
    IGNORE_INDEX,
    FormatError,
    collate,
    pack_best_fit,
    pack_rows,
    padding_share,
    render_texts,
    row_of,
    tokenize_example,
)

PROMPT = "A 45-year-old man presents with chest pain. Which is the most likely diagnosis?\nA. Angina\nB. GERD"
REASONING = "Let me think step by step.\nThe pain radiates to the left arm."
ANSWER = "The answer is A. \\boxed{A}"


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_rendered_text_is_m1_format(tok) -> None:
    prompt_text, completion = render_texts(tok, PROMPT, REASONING, ANSWER)
    assert prompt_text == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    assert completion == (f"<|im_start|>think\n{REASONING}\n<|im_start|>answer\nAnswer: {ANSWER}<|im_end|>\n")


def test_system_prompt_modes(tok) -> None:
    custom, _ = render_texts(tok, PROMPT, REASONING, ANSWER, "You are a careful physician.")
    assert custom.startswith("<|im_start|>system\nYou are a careful physician.<|im_end|>\n<|im_start|>user\n")
    none, _ = render_texts(tok, PROMPT, REASONING, ANSWER, "none")
    assert "system" not in none  # the tiny template adds no default system turn, so "none" is honoured

    class DefaultSystem:  # a template like Qwen2.5-Instruct's: a default system turn when none is given
        def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=False):
            if msgs[0]["role"] != "system":
                msgs = [{"role": "system", "content": "You are Qwen."}, *msgs]
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
            return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    with pytest.raises(FormatError, match="inserts a default system turn"):
        render_texts(DefaultSystem(), PROMPT, REASONING, ANSWER, "none")
    default, _ = render_texts(DefaultSystem(), PROMPT, REASONING, ANSWER)
    assert default.startswith("<|im_start|>system\nYou are Qwen.<|im_end|>")


def test_mask_is_exactly_the_prompt_token_by_token(tok) -> None:
    ex = tokenize_example(tok, PROMPT, REASONING, ANSWER)
    prompt_ids = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    full_ids = tok.apply_chat_template(
        [
            {"role": "user", "content": PROMPT},
            {
                "role": "assistant",
                "content": render_texts(tok, PROMPT, REASONING, ANSWER)[1][: -len("<|im_end|>\n")],
            },
        ],
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    # What the model sees equals tokenizing the whole chat at once (the split does not change tokens) ...
    assert ex.input_ids == list(full_ids)
    labels = ex.labels
    # ... and the masked positions are exactly the prompt's tokens, position by position.
    masked = [i for i, t in enumerate(labels) if t == IGNORE_INDEX]
    assert masked == list(range(len(prompt_ids)))
    assert ex.input_ids[: len(prompt_ids)] == list(prompt_ids)
    assert labels[len(prompt_ids) :] == ex.input_ids[len(prompt_ids) :]
    # The think marker is the special <|im_start|> token followed by "think", as in Qwen2.5.
    first = ex.input_ids[len(prompt_ids)]
    assert first == IM_START_ID
    # (the tiny BPE has no "think" token: a few word pieces; Qwen2.5's vocabulary has one)
    assert tok.decode(ex.input_ids[len(prompt_ids) : len(prompt_ids) + 8]).startswith("<|im_start|>think\n")
    # The learned text is the assistant turn and nothing else.
    assert (
        tok.decode([t for t in labels if t != IGNORE_INDEX])
        == render_texts(tok, PROMPT, REASONING, ANSWER)[1]
    )
    # The template's {% generation %} markers agree: transformers' own assistant mask covers the same content.
    am = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "x"}],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )["assistant_masks"]
    assert am.index(1) == len(prompt_ids)


def test_best_fit_packing() -> None:
    lengths = [7, 5, 4, 3, 3, 2, 1]
    bins = pack_best_fit(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 3  # 25 tokens need at least 3 bins of 10
    with pytest.raises(ValueError, match="exceeds"):
        pack_best_fit([11], 10)


def test_packed_rows_keep_attention_within_each_example(tok, tiny_model_dir: Path) -> None:
    """Logits of examples packed in one row equal their logits alone: no attention across examples."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    examples = [
        tokenize_example(tok, PROMPT, REASONING, ANSWER),
        tokenize_example(tok, "Which vitamin deficiency causes scurvy?\nA. C\nB. D", "Collagen.", "C"),
        tokenize_example(tok, "Is aspirin an NSAID?\nA. yes\nB. no", "It inhibits COX.", "yes"),
    ]
    rows = pack_rows(examples, capacity=1000)
    assert len(rows) == 1 and rows[0].num_examples == 3
    batch, stats = collate(rows + [row_of(examples[2])], tok.pad_token_id, packed=True)
    assert "attention_mask" not in batch  # packed: the mask comes from the restarting position ids
    assert stats.examples == 4 and stats.padded == len(rows[0].input_ids) - len(examples[2].input_ids)
    ids = rows[0].input_ids
    offsets = []  # where each example sits inside the packed row
    for e in examples:
        n = len(e.input_ids)
        offsets.append((next(i for i in range(len(ids) - n + 1) if ids[i : i + n] == e.input_ids), e))
    assert sorted(s for s, _ in offsets)[1] > 0
    with torch.no_grad():
        # use_cache=False as in training: with a cache transformers does not look for packed sequences.
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        for start, e in offsets:
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            torch.testing.assert_close(
                packed[0, start : start + len(e.input_ids)], alone, atol=1e-4, rtol=1e-4
            )
        # The padded second row: its real tokens are unaffected by the padding tail.
        alone = model(input_ids=torch.tensor([examples[2].input_ids])).logits[0]
        torch.testing.assert_close(packed[1, : len(examples[2].input_ids)], alone, atol=1e-4, rtol=1e-4)
        # Control: without restarting position ids the later examples do see the earlier ones.
        flat = model(input_ids=batch["input_ids"][:1], use_cache=False).logits
        late_start, late = max(offsets, key=lambda x: x[0])
        late_alone = model(input_ids=torch.tensor([late.input_ids])).logits[0]
        assert (flat[0, late_start : late_start + len(late.input_ids)] - late_alone).abs().max() > 1e-2
    # Labels: the prompt of every packed example is masked, its assistant turn kept.
    assert [t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX] == [
        t for _, e in sorted(offsets, key=lambda x: x[0]) for t in e.labels if t != IGNORE_INDEX
    ]
    assert (batch["labels"][1, len(examples[2].input_ids) :] == IGNORE_INDEX).all()


def test_unpacked_collate_pads_right_with_mask(tok) -> None:
    a = tokenize_example(tok, PROMPT, REASONING, ANSWER)
    b = tokenize_example(tok, "Short?\nA. x\nB. y", "r", "x")
    batch, stats = collate([row_of(a), row_of(b)], tok.pad_token_id, packed=False, pad_to_multiple_of=8)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= len(a.input_ids)
    assert batch["attention_mask"].sum().item() == len(a.input_ids) + len(b.input_ids) == stats.tokens
    assert stats.padded == 2 * width - stats.tokens
    assert stats.padding_share == pytest.approx(stats.padded / (2 * width))


def test_padding_share_and_plan(tmp_path: Path) -> None:
    assert padding_share([4, 2, 3, 3], 2) == pytest.approx(2 / 14)
    assert padding_share([4, 2, 3, 3], 1) == 0.0
    cfg = SFTConfig.model_validate(
        {
            "name": "t",
            "run_dir": str(tmp_path),
            "data": {"path": "x.parquet"},
            "model": {"path": "m"},
            "train": {"epochs": 3, "global_batch_size": 8, "per_device_batch_size": 2, "max_length": 100},
            "resources": {"num_workers": 2},
        }
    )
    assert cfg.grad_accum == 2
    plan = make_plan(cfg, [50] * 41 + [-1])  # one example over max_length
    assert (plan.examples, plan.too_long, plan.rows_per_worker) == (42, 1, 20)
    assert plan.micro_batches_per_epoch == 10 and plan.steps_per_epoch == 5 and plan.max_steps == 15
    assert plan.warmup_steps == 1  # ceil(0.05 * 15)
    assert packed_lengths([60, 50, 40, 30], 100, 4) == [100, 80]  # 40 goes to the fuller bin


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from curation.config import ConfigError

    bad = tmp_path / "sft.yaml"
    bad.write_text("name: x\nrun_dir: r\ndata: {table: m23k}\nmodel: {path: m}\ntrain: {lr_typo: 1}\n")
    with pytest.raises(ConfigError, match="lr_typo"):
        load_sft_config(bad)
    bad.write_text("name: x\nrun_dir: r\ndata: {table: m23k, path: a.parquet}\nmodel: {path: m}\n")
    with pytest.raises(ConfigError, match="exactly one of table, path, hf"):
        load_sft_config(bad)
    bad.write_text(
        "name: x\nrun_dir: r\ndata: {table: m23k}\nmodel: {path: m}\n"
        "train: {global_batch_size: 6}\nresources: {num_workers: 4}\n"
    )
    with pytest.raises(ConfigError, match="not a multiple"):
        load_sft_config(bad)


def test_m1_preset_matches_the_recipe() -> None:
    """curation/configs/sft_m1.yaml is m1's published recipe (REFERENCE: SFT recipe)."""
    from curation.cli import default_config_path

    cfg = load_sft_config(default_config_path().parent / "sft_m1.yaml")
    t = cfg.train
    assert cfg.model.path == "Qwen/Qwen2.5-7B-Instruct"
    assert (t.lr, t.epochs, t.global_batch_size, t.per_device_batch_size) == (1e-5, 5, 16, 1)
    assert (t.warmup_ratio, t.lr_scheduler, t.weight_decay, t.adam_beta1, t.adam_beta2) == (
        0.05,
        "cosine",
        1e-4,
        0.9,
        0.95,
    )
    assert t.bf16 and cfg.model.dtype == "bfloat16" and t.max_length == 32768 and not t.packing
    assert t.fsdp.enabled and t.fsdp.wrap == ["Qwen2DecoderLayer"] and t.save_every_epochs == 1
    assert (
        cfg.resources.use_gpu and cfg.resources.num_workers * t.per_device_batch_size * cfg.grad_accum == 16
    )
    assert cfg.data.columns.answer == "distilled_answer_string"


def test_demo_preset_validates(tmp_path: Path) -> None:
    from sft.demo import write_demo_config

    cfg = load_sft_config(write_demo_config(tmp_path, tmp_path / "model", steps=3, table="m23k"))
    assert (cfg.data.table, cfg.train.max_steps, cfg.resources.num_workers) == ("m23k", 3, 2)
    assert cfg.run_dir == str(tmp_path.resolve()) and not cfg.resources.use_gpu


def test_parquet_source_missing_column_names_file_and_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sft.data import DataError, source_dataset

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"prompt": ["q"], "reasoning": ["r"]}), path)
    cfg = SFTConfig.model_validate(
        {"name": "t", "run_dir": str(tmp_path), "data": {"path": str(path)}, "model": {"path": "m"}}
    )
    with pytest.raises(DataError, match=r"train\.parquet: missing column\(s\) \['distilled_answer_string'\]"):
        source_dataset(cfg)
    cfg = SFTConfig.model_validate(
        {"name": "t", "run_dir": str(tmp_path / "nope"), "data": {"table": "m23k"}, "model": {"path": "m"}}
    )
    with pytest.raises(DataError, match="does not exist"):
        source_dataset(cfg)
