"""m1's SFT example format, the assistant-only loss mask, packing and collation: pure functions, tested directly.

An example is rendered with the base model's own chat template:

    prompt_text = template(system?, user=prompt, add_generation_prompt=True)     # ends "<|im_start|>assistant\\n"
    full_text   = template(system?, user=prompt, assistant=m1_assistant_text)
    m1_assistant_text = "<|im_start|>think\\n" reasoning "\\n<|im_start|>answer\\nAnswer: " answer

The token ids are ``tokenize(prompt_text) + tokenize(full_text[len(prompt_text):])`` and the labels are -100 on
exactly the prompt's ids: the model learns the assistant turn (think marker, reasoning, answer marker, answer,
end-of-turn) and nothing of the prompt. The split falls right after the generation prompt, where ChatML has a
newline followed by a special token, so the concatenation equals tokenizing ``full_text`` in one go (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from curation.errors import UserError
from curation.rules.traces import assistant_text

IGNORE_INDEX = -100
TEMPLATE_DEFAULT = "template_default"
NO_SYSTEM = "none"


class FormatError(UserError):
    """An example or a chat template cannot be rendered into m1's SFT format."""


def messages_for(prompt: str, system_prompt: str = TEMPLATE_DEFAULT) -> list[dict[str, str]]:
    """The conversation up to the assistant turn, with the system turn as configured."""
    msgs: list[dict[str, str]] = []
    if system_prompt not in (TEMPLATE_DEFAULT, NO_SYSTEM):
        msgs.append({"role": "system", "content": system_prompt})
    msgs.append({"role": "user", "content": prompt})
    return msgs


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    prompt_length: int  # the first prompt_length ids are the prompt (labels -100)

    @property
    def labels(self) -> list[int]:
        return [IGNORE_INDEX] * self.prompt_length + self.input_ids[self.prompt_length :]


def render_texts(
    tokenizer: Any, prompt: str, reasoning: str, answer: str, system_prompt: str = TEMPLATE_DEFAULT
) -> tuple[str, str]:
    """(prompt_text, completion_text) of one example; their concatenation is the whole rendered chat."""
    msgs = messages_for(prompt, system_prompt)
    prompt_text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*msgs, {"role": "assistant", "content": assistant_text(reasoning, answer)}], tokenize=False
    )
    if not full.startswith(prompt_text):
        raise FormatError(
            "the chat template does not render the prompt as a prefix of the whole conversation "
            "(it rewrites earlier turns when an assistant turn follows); assistant-only loss needs a prefix"
        )
    # "none": the template must not add a system turn of its own (Qwen2.5-Instruct's does when none is given).
    if system_prompt == NO_SYSTEM and "system" in prompt_text.replace(prompt, ""):
        raise FormatError(
            "system_prompt: none, but this chat template inserts a default system turn when none is given; "
            "use system_prompt: template_default (keep the template's) or give the system text explicitly"
        )
    return prompt_text, full[len(prompt_text) :]


def tokenize_example(
    tokenizer: Any, prompt: str, reasoning: str, answer: str, system_prompt: str = TEMPLATE_DEFAULT
) -> Example:
    prompt_text, completion_text = render_texts(tokenizer, prompt, reasoning, answer, system_prompt)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    return Example(list(prompt_ids) + list(completion_ids), len(prompt_ids))


# ---- packing -----------------------------------------------------------------------------------------
def pack_best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing bin packing: indices of ``lengths`` grouped into bins of at most ``capacity`` tokens.

    Longest first, each into the fullest bin it still fits (what TRL calls "bfd"). Every length must be
    <= capacity. Bins come back in order of creation, each bin's indices in placement order.
    """
    import bisect

    bins: list[list[int]] = []
    # (space left, bin id), sorted: the first entry with space >= n is the best fit.
    free: list[tuple[int, int]] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"length {n} of item {i} exceeds the pack capacity {capacity}")
        pos = bisect.bisect_left(free, (n, -1))
        if pos == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
        else:
            space, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (space - n, b))
    return bins


@dataclass(frozen=True)
class Row:
    """One training row: an example, or several packed together (position ids restart at each example)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    num_examples: int


def row_of(example: Example) -> Row:
    n = len(example.input_ids)
    return Row(example.input_ids, example.labels, list(range(n)), 1)


def pack_rows(examples: Sequence[Example], capacity: int) -> list[Row]:
    """Examples packed into rows of at most ``capacity`` tokens (best-fit decreasing)."""
    rows = []
    for group in pack_best_fit([len(e.input_ids) for e in examples], capacity):
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in group:
            e = examples[i]
            ids += e.input_ids
            labels += e.labels
            pos += range(len(e.input_ids))
        rows.append(Row(ids, labels, pos, len(group)))
    return rows


# ---- collation ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchStats:
    tokens: int  # real tokens in the batch
    padded: int  # pad positions added to make the batch rectangular
    label_tokens: int  # tokens that carry loss
    examples: int

    @property
    def padding_share(self) -> float:
        total = self.tokens + self.padded
        return self.padded / total if total else 0.0


def collate(
    rows: Sequence[Row], pad_id: int, *, packed: bool, pad_to_multiple_of: int | None = None
) -> tuple[dict[str, Any], BatchStats]:
    """Right-pad rows into tensors.

    Unpacked rows get an attention mask. Packed rows get none: transformers derives a block-diagonal causal
    mask from position ids that restart at 0 for each example (flash-attention uses them as varlen bounds),
    so no token attends across examples. The padding tail of a packed row is its own block (positions from
    0, label -100): real tokens never see it and it carries no loss.
    """
    import torch

    width = max(len(r.input_ids) for r in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    tokens = label_tokens = examples = 0
    for b, r in enumerate(rows):
        n = len(r.input_ids)
        ids[b, :n] = torch.tensor(r.input_ids)
        labels[b, :n] = torch.tensor(r.labels)
        pos[b, :n] = torch.tensor(r.position_ids)
        pos[b, n:] = torch.arange(width - n)
        mask[b, :n] = 1
        tokens += n
        label_tokens += sum(
            1 for t in r.labels[1:] if t != IGNORE_INDEX
        )  # the first label is never predicted
        examples += r.num_examples
    batch: dict[str, Any] = {"input_ids": ids, "labels": labels, "position_ids": pos}
    if not packed:
        batch["attention_mask"] = mask
    stats = BatchStats(tokens, len(rows) * width - tokens, label_tokens, examples)
    return batch, stats


def padding_share(lengths: Sequence[int], batch_size: int) -> float:
    """Share of pad tokens when consecutive rows of ``lengths`` are batched ``batch_size`` at a time and each
    batch is padded to its longest row."""
    total = padded = 0
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i : i + batch_size]
        total += max(chunk) * len(chunk)
        padded += max(chunk) * len(chunk) - sum(chunk)
    return padded / total if total else 0.0
