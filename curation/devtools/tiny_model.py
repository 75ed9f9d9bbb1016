"""A tiny random-init Qwen2 causal LM with a real tokenizer and chat template, built offline in seconds.

IT PRODUCES NONSENSE. Its weights are random; it knows no medicine and answers no question correctly.
It exists so that tests and laptop runs exercise the real machinery end to end -- a byte-level BPE
tokenizer, a Qwen-style chat template, vLLM (also ``vllm serve``), transformers and Ray Train -- with no
hub download and no GPU. On a cluster, point the same configs at a hub id (e.g. Qwen/Qwen2.5-7B-Instruct)
instead; nothing else in the project knows about this model.

Shape: Qwen2 architecture, hidden 128, 2 layers, 2 attention heads of dim 64 (the vLLM CPU backend
rejects head_dim 16), 1 KV head, 16,384 positions (prompt + an 8K thinking budget fit), tied embeddings.
The tokenizer is trained on the text of the shipped sample pool (``curation/sample_pool``, when present)
plus a built-in list of medical sentences. Special tokens ``<|endoftext|>`` (0), ``<|im_start|>`` (1) and
``<|im_end|>`` (2) always get those ids; ``<|im_end|>`` is the eos token, as in Qwen2.5-Instruct.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from curation.errors import UserError
from curation.jobenv import nonempty_path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 0, 1, 2

HIDDEN_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 2
NUM_KV_HEADS = 1
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS  # 64: the smallest the vLLM CPU attention backend accepts here
INTERMEDIATE_SIZE = 256
MAX_POSITIONS = 16384
# Qwen2's pre-tokenizer regex (digits split one by one), as in transformers' Qwen2Tokenizer.
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

NOTE = (
    "This is a TINY RANDOM-INIT model built by curation.devtools.tiny_model. It produces nonsense: its weights are "
    "random and it knows no medicine. It exists only to exercise the real machinery (tokenizer, chat template, "
    "transformers, vLLM, Ray Train) offline; use a real model (e.g. Qwen/Qwen2.5-7B-Instruct) for real data."
)

# Qwen2.5-style ChatML. The {% generation %} markers let transformers return an assistant-token mask
# (return_assistant_tokens_mask=True) for assistant-only SFT loss; they render to nothing otherwise.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Fallback corpus when no sample pool ships: handwritten sentences, expanded by templates below.
_SENTENCES = [
    "A 45-year-old man presents with crushing chest pain radiating to the left arm.",
    "Which of the following is the most likely diagnosis?",
    "Which of the following is the most appropriate next step in management?",
    "Which of the following is the mechanism of action of the most likely drug?",
    "A 6-year-old girl is brought to the emergency department with fever and a stiff neck.",
    "Physical examination shows jugular venous distension and bilateral crackles.",
    "Laboratory studies show a hemoglobin of 8.2 g/dL and a mean corpuscular volume of 70 fL.",
    "An electrocardiogram shows ST-segment elevation in leads II, III and aVF.",
    "Serum potassium is 6.1 mEq/L and creatinine is 2.4 mg/dL.",
    "Chest x-ray shows a right lower lobe consolidation.",
    "Lumbar puncture shows elevated protein and low glucose in the cerebrospinal fluid.",
    "Biopsy of the lesion shows noncaseating granulomas.",
    "The patient has a history of type 2 diabetes mellitus and hypertension.",
    "She takes metformin, lisinopril and atorvastatin daily.",
    "He has smoked one pack of cigarettes daily for 30 years.",
    "Her temperature is 38.9 C, pulse is 112/min, and blood pressure is 88/54 mm Hg.",
    "Deficiency of vitamin B12 causes megaloblastic anemia and subacute combined degeneration.",
    "Aspirin irreversibly inhibits cyclooxygenase and reduces thromboxane A2 synthesis.",
    "Beta blockers reduce mortality after myocardial infarction.",
    "Loop diuretics inhibit the Na-K-2Cl cotransporter in the thick ascending limb.",
    "Warfarin inhibits vitamin K epoxide reductase.",
    "Heparin potentiates antithrombin III.",
    "Insulin promotes glucose uptake in skeletal muscle and adipose tissue.",
    "The recurrent laryngeal nerve innervates most intrinsic muscles of the larynx.",
    "Streptococcus pneumoniae is the most common cause of community-acquired pneumonia.",
    "Mycobacterium tuberculosis is an acid-fast bacillus.",
    "Hepatitis B surface antigen indicates current infection.",
    "Graves disease is caused by antibodies that stimulate the TSH receptor.",
    "Addison disease presents with hyperpigmentation, hypotension and hyperkalemia.",
    "Cushing syndrome presents with central obesity, striae and hypertension.",
    "Kawasaki disease is treated with intravenous immunoglobulin and aspirin.",
    "Does preoperative anemia predict postoperative complications in elderly patients?",
    "Is statin therapy associated with a lower risk of dementia?",
    "The answer is yes, no or maybe.",
    "Randomized controlled trials provide the strongest evidence for treatment effects.",
    "Sensitivity is the proportion of true positives among all patients with the disease.",
    "Specificity is the proportion of true negatives among all patients without the disease.",
    "The number needed to treat is the inverse of the absolute risk reduction.",
    "Cohort studies measure relative risk; case-control studies measure odds ratios.",
    "Informed consent requires capacity, disclosure, understanding and voluntariness.",
    "Return your final response within \\boxed{}.",
    "Let me think step by step about the pathophysiology.",
    "The correct answer is B because the clinical picture fits.",
    "Wait, the elevated lactate suggests tissue hypoperfusion.",
    "Therefore the final answer is \\boxed{C}.",
]
_PATIENTS = [
    "A 23-year-old woman",
    "A 67-year-old man",
    "A 4-year-old boy",
    "A 52-year-old woman",
    "A newborn",
]
_COMPLAINTS = [
    "progressive shortness of breath",
    "painless jaundice",
    "a productive cough for three weeks",
    "sudden severe headache",
    "fatigue and weight loss",
    "episodic palpitations",
    "burning epigastric pain",
    "bloody diarrhea",
]
_DRUGS = ["metoprolol", "amoxicillin", "omeprazole", "furosemide", "prednisone", "levothyroxine", "lithium"]
_EFFECTS = ["bradycardia", "a maculopapular rash", "hypokalemia", "hyperglycemia", "tremor", "hypothyroidism"]
_STEMS = [
    "Which of the following is the most likely cause of",
    "Which of the following is the best initial test for",
    "Which of the following is the most appropriate treatment for",
    "Which of the following is a risk factor for",
]
_ORGANISMS = [
    ("Staphylococcus aureus", "endocarditis in intravenous drug users"),
    ("Escherichia coli", "urinary tract infections"),
    ("Neisseria meningitidis", "meningitis in young adults"),
    ("Clostridioides difficile", "diarrhea after antibiotic use"),
    ("Plasmodium falciparum", "severe malaria"),
    ("Candida albicans", "oral thrush in immunocompromised patients"),
    ("Treponema pallidum", "syphilis"),
    ("Helicobacter pylori", "peptic ulcer disease"),
]
_ORGANS = ["heart", "kidney", "liver", "lung", "pancreas", "thyroid gland", "adrenal cortex", "spleen"]


def builtin_corpus() -> list[str]:
    """A few hundred medical-sounding lines, deterministic, used when no sample pool ships."""
    lines = list(_SENTENCES)
    for patient, complaint in itertools.product(_PATIENTS, _COMPLAINTS):
        lines.append(f"{patient} comes to the physician because of {complaint}.")
    for drug, effect in itertools.product(_DRUGS, _EFFECTS):
        lines.append(f"Treatment with {drug} is most likely to cause {effect}.")
    for stem, complaint in itertools.product(_STEMS, _COMPLAINTS):
        lines.append(f"{stem} {complaint}?")
    for drug, organ in itertools.product(_DRUGS, _ORGANS):
        lines.append(f"Which adverse effect of {drug} involves the {organ}?")
    for organism, disease in _ORGANISMS:
        lines.append(f"{organism} is a common cause of {disease}.")
        lines.append(f"Infection with {organism} is best confirmed by culture or a specific antigen test.")
    for organ in _ORGANS:
        lines.append(f"Which of the following cells of the {organ} is most likely affected?")
        lines.append(f"A: The {organ}\nB: None of the above\nC: Both\nD: Neither")
    return lines


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON-like value (rows of any of the four source formats)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _json_rows(path: Path) -> list[Any]:
    """Rows of a JSON array or JSONL file, leniently: the sample pool deliberately holds bad bytes and
    broken lines (it tests the loaders); for tokenizer training they are replaced or skipped."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        raw = f.read()
    if path.name.endswith(".json"):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            return []
        return data if isinstance(data, list) else [data]
    rows = []
    for line in raw.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def sample_pool_corpus(pool_dir: Path | None = None, max_chars: int = 4_000_000) -> list[str]:
    """Text of the shipped sample pool files (JSONL or Parquet), in a stable order; empty if none ship."""
    pool_dir = pool_dir or Path(__file__).parent.parent / "sample_pool"
    if not pool_dir.is_dir():
        return []
    texts: list[str] = []
    total = 0
    for path in sorted(p for p in pool_dir.rglob("*") if p.is_file()):
        name = path.name
        if name.endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                rows: Iterable[Any] = pq.read_table(path).to_pylist()
            except (OSError, pa.ArrowException):  # a deliberately broken file: nothing to learn from
                continue
        elif name.endswith((".jsonl", ".jsonl.gz", ".json")):
            rows = _json_rows(path)
        else:
            continue
        for row in rows:
            for s in _strings(row):
                if s.strip():
                    texts.append(s)
                    total += len(s)
            if total >= max_chars:  # plenty for a 4K-token vocabulary; keeps the build in seconds
                return texts
    return texts


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (tokenizers.Tokenizer) with the special tokens at ids 0, 1, 2."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    # The exact pipeline transformers' Qwen2Tokenizer rebuilds on load (NFC, Qwen's split regex, byte-level),
    # so AutoTokenizer, vLLM and the raw tokenizer.json all produce the same ids.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    for token, expected in zip(SPECIAL_TOKENS, (ENDOFTEXT_ID, IM_START_ID, IM_END_ID), strict=True):
        if tokenizer.token_to_id(token) != expected:
            raise RuntimeError(
                f"special token {token} got id {tokenizer.token_to_id(token)}, expected {expected}"
            )
    return tokenizer


# The BPE vocabulary: the 256 byte ids plus room for merges, up to what a "tiny" model's embedding should hold.
MIN_VOCAB, MAX_VOCAB = 512, 262_144


def vocab_size_arg(text: str) -> int:
    """argparse type for --vocab-size: a whole number in [MIN_VOCAB, MAX_VOCAB] (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not MIN_VOCAB <= value <= MAX_VOCAB:
        raise argparse.ArgumentTypeError(
            f"must be between {MIN_VOCAB} and {MAX_VOCAB} (256 byte ids plus merges), got {value}"
        )
    return value


def build_tiny_model(
    out_dir: str | Path, *, corpus: Iterable[str] | None = None, vocab_size: int = 4096, seed: int = 0
) -> Path:
    """Build the tiny nonsense model (HF format, safetensors) under ``out_dir`` and return that directory.

    Deterministic for a given corpus, vocab size and seed. No network access.
    """
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        why = "too small: the byte alphabet alone takes 256 ids" if vocab_size < MIN_VOCAB else "too large"
        raise ValueError(f"vocab_size must be between {MIN_VOCAB} and {MAX_VOCAB}, got {vocab_size} ({why})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Default corpus: the sample pool's questions plus the built-in lines (which also carry the m1 answer
    # format: \boxed{}, "Wait", option letters), so frequent words of both become single tokens.
    texts = list(corpus) if corpus is not None else sample_pool_corpus() + builtin_corpus()
    if not texts:
        raise ValueError("build_tiny_model: the corpus is empty; give some text to train the tokenizer on")

    raw_tokenizer = train_tokenizer(texts, vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw_tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    # The model's vocabulary is exactly the tokenizer's, so every id the random model samples decodes.
    actual_vocab = raw_tokenizer.get_vocab_size()

    config = Qwen2Config(
        vocab_size=actual_vocab,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=IM_END_ID,
        pad_token_id=ENDOFTEXT_ID,
        use_sliding_window=False,
        torch_dtype="float32",
    )
    config.m1_note = NOTE
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ENDOFTEXT_ID, eos_token_id=[IM_END_ID, ENDOFTEXT_ID], pad_token_id=ENDOFTEXT_ID
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        "# Tiny random-init Qwen2 model (nonsense)\n\n"
        f"{NOTE}\n\n"
        f"Built by `m1 tiny-model` (curation/devtools/tiny_model.py) with vocab_size={actual_vocab}, seed={seed}: "
        f"hidden {HIDDEN_SIZE}, {NUM_LAYERS} layers, {NUM_HEADS} heads (head_dim {HEAD_DIM}), "
        f"{NUM_KV_HEADS} KV head, {MAX_POSITIONS} positions.\n",
        encoding="utf-8",
    )
    return out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``tiny-model`` subcommand: ``m1 tiny-model DIR [--vocab-size N] [--seed S]``."""
    parser = subparsers.add_parser(
        "tiny-model",
        help="build the tiny random-init model (nonsense; for offline tests and demos)",
        description=NOTE,
    )
    parser.add_argument("dir", type=nonempty_path, help="output directory (created)")
    parser.add_argument(
        "--vocab-size",
        type=vocab_size_arg,
        default=4096,
        help=f"BPE vocabulary size, {MIN_VOCAB}..{MAX_VOCAB} (default 4096)",
    )
    parser.add_argument("--seed", type=int, default=0, help="weight-init seed (default 0)")
    parser.set_defaults(func=_run_cli)
    return parser


def _run_cli(args: argparse.Namespace) -> int:

    target = Path(args.dir)
    if target.exists() and not target.is_dir():
        raise UserError(f"{args.dir}: exists and is a file; give a new or empty directory for the model")
    try:
        path = build_tiny_model(args.dir, vocab_size=args.vocab_size, seed=args.seed)
    except (FileExistsError, NotADirectoryError, PermissionError) as exc:
        raise UserError(
            f"{exc.filename or args.dir}: cannot write the model there ({exc.strerror or exc})"
        ) from None
    print(f"tiny model written to {path} (random weights: it produces nonsense)")
    return 0
