"""Rehearsal server: an OpenAI-compatible API on loopback that plays the teacher or a scorer without a model.

Rehearse a run against it before paying for a real API: rate limits, retries, timeouts, cost projection and
resume all behave as they would against DeepSeek-R1 or a hosted Qwen, but every answer is free, instant (or
as slow as configured) and deterministic. The demo uses it as the teacher; the tests use it for every fault.

    m1 rehearse --pool runs/demo/questions --latency-ms 200 --fault rate_limit=0.05
    python -m curation.devtools.rehearse --config rehearse.yaml

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /stats``
(``?summary=1`` leaves out the per-request dicts), ``POST /stats/reset``, ``GET /health``.

How an answer is decided (all of it deterministic, nothing random at run time):

* The question: the last user message (or the completion prompt) is looked up in the pool, the canonical
  ``questions`` table. The lookup splits the text at the last line that starts with ``A. `` (the options
  block of m1's rendering) and uses (the last 48 characters before it, that ``A.`` line) as a dict key, then
  confirms with ``prompt in content``; so any prefix (``Return your final response within \\boxed{}. ``)
  or suffix is allowed and a lookup costs one dict probe plus one substring check. Questions shorter than
  48 characters are keyed by their ``A.`` line alone and confirmed the same way.
* Correct or not: ``blake2b(seed, model, content)`` gives a uniform number; below ``correct_rate`` (or the
  model's entry in ``model_correct_rates``) the answer is the pool's correct option, else a wrong option chosen
  by the same hash. The same request always gets the same answer, whatever its attempt number.
* No pool match: the ``X. text`` option lines are read from the content and one is picked by the hash; with no
  option lines the answer is a short fixed sentence ending with a two-digit code on its own line.
* Faults: one uniform number from ``blake2b(seed, fingerprint, attempt)`` falls into one fault's slice of
  [0, 1) (the slices are the configured rates, laid end to end) or into the rest (no fault). The attempt number
  is how many times the server has seen the fingerprint before, so a retry gets a fresh draw.
* Fingerprint: the ``X-M1-Request-Id`` header when sent, else sha256 of the canonical JSON body
  (:func:`request_fingerprint`).
* Tokens: :func:`estimate_tokens` counts word pieces (``\\w+`` runs and single punctuation marks); no tokenizer
  and no download. Reasoning text is built from pieces whose counts are known, so it is never re-counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

# The settings and the process control live with the engine layer (a `kind: rehearsal` engine); re-exported here.
from curation.engines.rehearsal import FAULT_KINDS as FAULT_KINDS
from curation.engines.rehearsal import FaultKind as FaultKind
from curation.engines.rehearsal import FaultRates as FaultRates
from curation.engines.rehearsal import RehearsalConfig as RehearsalConfig
from curation.engines.rehearsal import spawn_rehearsal_server as spawn_rehearsal_server
from curation.engines.rehearsal import stop_rehearsal_server as stop_rehearsal_server
from curation.store.runstore import resolve

try:  # A fast JSON codec when the environment has one (vLLM brings msgspec); the stdlib otherwise.
    import msgspec.json as _msgspec_json

    _dumps: Callable[[Any], bytes] = _msgspec_json.encode
    _loads: Callable[[bytes], Any] = _msgspec_json.decode
except ImportError:  # pragma: no cover - depends on the environment

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    _loads = json.loads

try:  # uvloop roughly doubles aiohttp's throughput; optional.
    import uvloop as _uvloop
except ImportError:  # pragma: no cover - depends on the environment
    _uvloop = None

# Outcomes counted in /stats. "ok" and "slow" (answered after the delay while the client still listened)
# are the successes; "slow_abandoned" means the client had gone by the time the answer was ready.
OUTCOMES = (
    "ok",
    "max_tokens",
    "slow_abandoned",
    "bad_request",
    "unauthorized",
    "model_not_found",
    *FAULT_KINDS,
)
SUCCESS_OUTCOMES = frozenset({"ok", "slow"})

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
OPTION_LINE_RE = re.compile(r"([A-J])\. (.*)")
ANSWER_LABELS = "ABCDEFGHIJ"


def estimate_tokens(text: str) -> int:
    """A cheap deterministic token estimate: ``\\w+`` runs plus single punctuation marks.

    It runs close to BPE tokenizers on English medical text (within ~20%), which is enough for rate limits
    (tpm) and cost projection; it needs no tokenizer files and no download.
    """
    return len(TOKEN_RE.findall(text))


def truncate_tokens(text: str, n: int) -> str:
    """The first ``n`` estimated tokens of ``text`` (whole tokens; trailing whitespace dropped)."""
    if n <= 0:
        return ""
    for i, match in enumerate(TOKEN_RE.finditer(text)):
        if i == n - 1:
            return text[: match.end()]
    return text


def request_fingerprint(body: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a request body (sorted keys, no spaces, UTF-8 kept as is).

    The server uses it when the client sends no ``X-M1-Request-Id`` header; clients can compute the same
    value to look up their requests in ``/stats``.
    """
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _uniforms(*parts: object) -> tuple[float, float, float, float]:
    """Four independent uniforms in [0, 1) from blake2b of the parts (stable across processes and runs)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=32).digest()
    scale = 2.0**-64
    return tuple(int.from_bytes(digest[i : i + 8], "little") * scale for i in (0, 8, 16, 24))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------- pool


@dataclass(frozen=True, slots=True)
class PoolQuestion:
    """What the server needs of one pool row."""

    prompt: str
    question: str
    labels: tuple[str, ...]
    texts: tuple[str, ...]
    answer_label: str
    answer_text: str


def _split_options(text: str) -> tuple[str, str] | None:
    """(text before the last ``A. `` line, that line) or None when there is no such line."""
    pos = text.rfind("\nA. ")
    if pos >= 0:
        head, start = text[:pos], pos + 1
    elif text.startswith("A. "):
        head, start = "", 0
    else:
        return None
    end = text.find("\n", start)
    return head, text[start : end if end >= 0 else len(text)]


def parse_option_lines(text: str) -> list[tuple[str, str]]:
    """The ``X. text`` option block of a prompt: consecutive lines A., B., C., ... from the last ``A. `` line."""
    split = _split_options(text)
    if split is None:
        return []
    start = len(split[0]) + (1 if split[0] else 0)
    options: list[tuple[str, str]] = []
    for line in text[start:].split("\n"):
        match = OPTION_LINE_RE.fullmatch(line.rstrip())
        if match is None or match.group(1) != ANSWER_LABELS[len(options)]:
            break
        options.append((match.group(1), match.group(2)))
    return options


class PoolIndex:
    """The pool keyed for O(1) lookup of the question a request is about (see the module docstring)."""

    TAIL = 48

    def __init__(self, questions: Sequence[PoolQuestion]) -> None:
        self.questions = list(questions)
        self._by_tail: dict[tuple[str, str], list[int]] = {}
        self._short_by_first_option: dict[str, list[int]] = {}
        self.unindexed = 0
        for i, q in enumerate(self.questions):
            split = _split_options(q.prompt)
            if split is None:
                self.unindexed += 1
                continue
            head, first_option = split
            if len(head) >= self.TAIL:
                self._by_tail.setdefault((head[-self.TAIL :], first_option), []).append(i)
            else:
                self._short_by_first_option.setdefault(first_option, []).append(i)

    def __len__(self) -> int:
        return len(self.questions)

    @classmethod
    def from_parquet(cls, path: str | Path) -> PoolIndex:
        """Read the columns the server needs from a Parquet file or folder of the `questions` table: a local
        path or any pyarrow filesystem URI (``s3://bucket/run/tables/...``, through the environment's endpoint
        and credentials, as the run store reads it)."""
        import pyarrow.dataset as ds
        import pyarrow.fs as pafs

        path = str(path)  # never through Path: it folds the '//' of s3://bucket into one slash
        fs, root = resolve(path)
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"rehearsal pool {path}: no such file or folder")
        columns = ["prompt", "question", "options", "answer_label", "answer_text"]
        try:
            table = ds.dataset(root, filesystem=fs, format="parquet").to_table(columns=columns)
        except Exception as exc:  # pyarrow raises several types; the message is what matters
            raise ValueError(f"rehearsal pool {path}: cannot read columns {columns}: {exc}") from exc
        prompts, stems, options, labels, texts = (table.column(c).to_pylist() for c in columns)
        questions = [
            PoolQuestion(
                prompt=prompts[i],
                question=stems[i],
                labels=tuple(o["label"] for o in options[i]),
                texts=tuple(o["text"] for o in options[i]),
                answer_label=labels[i],
                answer_text=texts[i],
            )
            for i in range(table.num_rows)
        ]
        return cls(questions)

    def find(self, content: str) -> PoolQuestion | None:
        """The pool question whose prompt ``content`` contains, or None."""
        split = _split_options(content)
        if split is None:
            return None
        head, first_option = split
        for i in self._by_tail.get((head[-self.TAIL :], first_option), ()):
            if self.questions[i].prompt in content:
                return self.questions[i]
        for i in self._short_by_first_option.get(first_option, ()):
            if self.questions[i].prompt in content:
                return self.questions[i]
        return None


# ------------------------------------------------------------------------------------------------ reasoning

_REASONING_SENTENCES = (
    "Let me recall the underlying pathophysiology first.",
    "The key finding in the stem seems to be the combination of symptoms and the timeline.",
    "Wait, I should not jump to conclusions; the age of the patient matters here.",
    "Hmm, the laboratory values point toward a specific mechanism.",
    "If this were an infectious cause, I would expect fever and an elevated white cell count.",
    "The question asks for the most likely answer, not every possible one.",
    "Let me go through the options one by one.",
    "That option describes a mechanism that does not fit the presentation.",
    "I remember that this drug class acts on the receptor mentioned in the stem.",
    "On the other hand, the classic teaching is different, so let me double-check.",
    "The histology described is typical of a chronic rather than an acute process.",
    "So the first-line management would depend on whether the patient is stable.",
    "Actually, the vignette mentions a family history, which suggests a genetic component.",
    "Contraindications are important here, especially renal function.",
    "Let me think about the anatomy: the nerve runs close to that structure.",
    "The time course of weeks makes an autoimmune process more plausible.",
    "But wait, the imaging findings could also be explained by a neoplasm.",
    "In epidemiology terms, this is asking about sensitivity rather than specificity.",
    "The enzyme deficiency would lead to accumulation of the upstream substrate.",
    "Hmm, I might be mixing up two similar syndromes, so let me separate them.",
    "The patient's vital signs suggest compensated shock.",
    "Another angle is to consider which option is the exception in the list.",
    "Guidelines usually recommend confirming the diagnosis before starting therapy.",
    "That would explain the low potassium and the metabolic alkalosis.",
    "I think the distractor here is the option that sounds familiar but is a different disease.",
    "The dose-response relationship matters for toxicity in this case.",
    "Pediatric presentations can differ, so the age group changes the likely answer.",
    "Let me verify with the mechanism of action once more.",
    "Okay, putting the findings together narrows it down considerably.",
    "The question stem is long, but only two details are really discriminating.",
    "Microbiology clue: the organism is described as gram-positive and catalase-negative.",
    "Considering the pharmacokinetics, the half-life would be prolonged in liver disease.",
    "The murmur described is best heard at the apex and radiates to the axilla.",
    "Right, and the biopsy finding is the hallmark of that condition.",
    "Let me reconsider whether the question is about prevention or treatment.",
    "The most common cause is not always the most dangerous one, and the stem asks for the most common.",
)


class ReasoningText:
    """R1-looking reasoning of an exact estimated length, cut from a fixed corpus at sentence starts."""

    def __init__(self, seed: int, corpus_tokens: int = 20_000) -> None:
        import random

        rng = random.Random(seed)
        sentences, count = [], 0
        while count < corpus_tokens:
            sentence = rng.choice(_REASONING_SENTENCES)
            if rng.random() < 0.25:
                sentence += "\n\n"
            sentences.append(sentence)
            count += estimate_tokens(sentence)
        # A paragraph break ends a sentence without the space that joins the others.
        self.text = "".join(
            s if i == 0 or sentences[i - 1].endswith("\n") else " " + s for i, s in enumerate(sentences)
        )
        self.offsets = [m.start() for m in TOKEN_RE.finditer(self.text)]
        self.size = len(self.offsets)
        self.offsets.append(len(self.text))
        starts, pos = [], 0
        for sentence in sentences:
            starts.append(pos)
            pos += estimate_tokens(sentence)
        self.sentence_starts = starts

    def filler(self, n: int, u: float) -> str:
        """``n`` tokens of corpus text starting at the sentence picked by ``u`` (wrapping around)."""
        parts, start = [], self.sentence_starts[int(u * len(self.sentence_starts))]
        while n > 0:
            take = min(n, self.size - start)
            parts.append(self.text[self.offsets[start] : self.offsets[start + take]].rstrip())
            n -= take
            start = 0
        return " ".join(parts)

    def compose(self, question: str, conclusion: str, n: int, u: float, finished: bool = True) -> str:
        """Reasoning of exactly ``n`` estimated tokens: an opening about the question, filler, a conclusion
        (left out when ``finished`` is false, as when the model runs out of tokens mid-thought)."""
        words = question.split()
        opening = "Okay, let me work through this. The question says: " + " ".join(words[:16])
        opening += "... So I need to find the best option."
        closing = conclusion if finished else ""
        n_closing = estimate_tokens(closing)
        fixed = estimate_tokens(opening) + n_closing
        if n <= fixed:  # short budgets keep the conclusion and shorten the opening
            if n <= n_closing:
                return truncate_tokens(closing, n)
            return f"{truncate_tokens(opening, n - n_closing)} {closing}".strip()
        return " ".join(part for part in (opening, self.filler(n - fixed, u), closing) if part)


_EXPLANATIONS = (
    "The findings described are most consistent with {text}; the other options do not account for the key "
    "features of the stem.",
    "Taking the presentation and the mechanism together, the best answer is {text}.",
    "Based on the clinical picture, {text} fits best, while the remaining choices are typical distractors.",
    "The discriminating detail in the question points to {text}.",
)
_NO_OPTION_ANSWERS = (
    "After weighing the description, the closest category is the one below.",
    "The text fits one category best; its code follows.",
    "Considering the main topic of the question, I choose the code below.",
)


# ------------------------------------------------------------------------------------------------- counters


class Counters:
    """/stats counters: plain ints and dicts of ints, cheap enough for millions of requests."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started_at = time.time()
        self.requests_total = 0
        self.in_flight = 0
        self.by_outcome: dict[str, int] = {}
        self.successes_by_request: dict[str, int] = {}
        self.attempts_by_request: dict[str, int] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.answers = {"correct": 0, "wrong": 0, "unknown": 0}

    def snapshot(self, per_request: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests_total": self.requests_total,
            "by_outcome": dict(self.by_outcome),
            "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 3),
            "in_flight": self.in_flight,
            "distinct_requests": len(self.attempts_by_request),
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "answers": dict(self.answers),
        }
        if per_request:
            out["successes_by_request"] = dict(self.successes_by_request)
            out["attempts_by_request"] = dict(self.attempts_by_request)
        return out


# ------------------------------------------------------------------------------------------------------ app


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class _Parsed:
    model: str
    content: str  # the last user message or the completion prompt: what the answer is about
    prompt_text: str  # everything the client sent, for the token count
    max_tokens: int | None
    n: int
    salt: str = ""  # the request id when answers vary per request (resampling), else empty


class RehearsalApp:
    """The aiohttp application and its state; shared by the in-thread server and the standalone process."""

    def __init__(self, cfg: RehearsalConfig) -> None:
        self.cfg = cfg
        self.pool = PoolIndex.from_parquet(cfg.pool) if cfg.pool else None
        self.counters = Counters()
        self.reasoning = ReasoningText(cfg.seed)
        self._fault_thresholds = cfg.faults.thresholds()
        self._auth_header = f"Bearer {cfg.auth_token.get_secret_value()}" if cfg.auth_token else None
        self._non_reasoning = set(cfg.non_reasoning_models)
        self._known_models = set(cfg.models)
        self._lognormal_mu = math.log(cfg.reasoning_tokens_mean) - cfg.reasoning_tokens_sigma**2 / 2

    def build(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/stats/reset", self._stats_reset)
        app.router.add_get("/health", self._health)
        return app

    # -- small endpoints

    async def _health(self, request: web.Request) -> web.Response:
        return _json_response({"status": "ok", "pool_questions": len(self.pool) if self.pool else 0})

    async def _models(self, request: web.Request) -> web.Response:
        created = int(self.counters.started_at)
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "m1-rehearsal"}
            for m in self.cfg.models
        ]
        return _json_response({"object": "list", "data": data})

    async def _stats(self, request: web.Request) -> web.Response:
        summary = request.query.get("summary", "0").lower() in ("1", "true", "yes")
        return _json_response(self.counters.snapshot(per_request=not summary))

    async def _stats_reset(self, request: web.Request) -> web.Response:
        self.counters.reset()
        return _json_response({"status": "reset"})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    # -- generation

    def _parse(self, body: Any, kind: str, fp: str) -> _Parsed:
        where = f"request {fp[:16]}"
        if not isinstance(body, dict):
            raise _BadRequest(f"{where}: the body must be a JSON object")
        if body.get("stream"):
            raise _BadRequest(f"{where}: 'stream': true is not supported by the rehearsal server", "stream")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest(f"{where}: 'model' is required", "model")
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _BadRequest(f"{where}: 'messages' must be a non-empty list", "messages")
            texts, content = [], None
            for i, m in enumerate(messages):
                text = m.get("content") if isinstance(m, dict) else None
                if isinstance(text, list):  # content parts: keep the text ones
                    text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
                if not isinstance(text, str):
                    raise _BadRequest(f"{where}: messages[{i}].content must be a string", f"messages[{i}]")
                texts.append(text)
                if m.get("role") == "user":
                    content = text
            content = texts[-1] if content is None else content
            prompt_text = "\n".join(texts)
            limit = body.get("max_completion_tokens", body.get("max_tokens"))
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise _BadRequest(f"{where}: 'prompt' must be a string (or a list of one string)", "prompt")
            content = prompt_text = prompt
            limit = body.get("max_tokens")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise _BadRequest(f"{where}: max_tokens must be a positive integer, got {limit!r}", "max_tokens")
        n = body.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 64:
            raise _BadRequest(f"{where}: 'n' must be an integer from 1 to 64, got {n!r}", "n")
        return _Parsed(model=model, content=content, prompt_text=prompt_text, max_tokens=limit, n=n)

    def _pick_fault(self, fp: str, attempt: int) -> str | None:
        if not self._fault_thresholds:
            return None
        u = _uniforms(self.cfg.seed, "fault", fp, attempt)[0]
        for upper, kind in self._fault_thresholds:
            if u < upper:
                return kind
        return None

    def _answer(self, p: _Parsed, index: int, fault: str | None) -> tuple[dict[str, Any], str]:
        """One choice's fields (reasoning, content, finish_reason, completion_tokens) and its correctness."""
        cfg = self.cfg
        salted = (p.salt,) if p.salt else ()  # a resampled attempt (new request id) draws a new answer
        u_correct, u_pick, u_style, u_len = _uniforms(cfg.seed, "answer", p.model, index, p.content, *salted)
        question = self.pool.find(p.content) if self.pool is not None else None
        if question is not None:
            labels, texts, stem = question.labels, question.texts, question.question
            rate = cfg.model_correct_rates.get(p.model, cfg.correct_rate)
            right = labels.index(question.answer_label) if question.answer_label in labels else 0
            if u_correct < rate or len(labels) < 2:
                chosen, verdict = right, "correct"
            else:
                wrong = [i for i in range(len(labels)) if i != right]
                chosen, verdict = wrong[int(u_pick * len(wrong))], "wrong"
        else:
            parsed = parse_option_lines(p.content)
            labels = tuple(label for label, _ in parsed)
            texts = tuple(text for _, text in parsed)
            stem = _split_options(p.content)[0] if parsed else p.content  # type: ignore[index]
            stem = stem.rpartition("\\boxed{}. ")[2] or stem  # m1's instruction prefix is not the question
            chosen, verdict = (int(u_pick * len(labels)) if labels else -1), "unknown"

        if chosen >= 0:
            label, text = labels[chosen], texts[chosen]
            boxed = text if u_style < cfg.boxed_text_ratio else label
            template = _EXPLANATIONS[int(u_pick * 7919) % len(_EXPLANATIONS)]
            explanation = template.format(text=text)
            content = f"{explanation}\n\n**Answer:** \\boxed{{{boxed}}}"
            conclusion = f"So the answer should be {label}: {text}."
        else:
            code = int(u_pick * 76)
            explanation = _NO_OPTION_ANSWERS[int(u_style * len(_NO_OPTION_ANSWERS))]
            content = f"{explanation}\n{code:02d}"
            conclusion = "So I will give that as my answer."

        wants_reasoning = cfg.reasoning and p.model not in self._non_reasoning
        n_reason = 0
        if wants_reasoning:
            u1 = max(u_len, 1e-12)
            u2 = _uniforms(cfg.seed, "length", p.content)[0]
            z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
            n_reason = int(round(math.exp(self._lognormal_mu + cfg.reasoning_tokens_sigma * z)))
            n_reason = max(1, min(cfg.reasoning_tokens_max, n_reason))
        n_content = estimate_tokens(content)

        finish = "stop"
        budget = p.max_tokens
        if fault == "length":
            # Ran out of tokens mid-thought: the same output, cut before any boxed answer.
            budget = max(1, min(budget or 10**9, n_reason if wants_reasoning else n_content // 2))
        finished_reasoning = True
        if budget is not None and n_reason + n_content > budget:
            finish = "length"
            if n_reason >= budget:
                n_reason, finished_reasoning, content, n_content = budget, False, "", 0
            else:
                n_content = budget - n_reason
                content = truncate_tokens(content, n_content)
            if "\\boxed{" in content:  # a cut inside the boxed answer must not leave a complete-looking one
                content = content[: content.index("\\boxed{")].rstrip()
                n_content = estimate_tokens(content)
        reasoning = (
            self.reasoning.compose(stem, conclusion, n_reason, u_len, finished_reasoning)
            if wants_reasoning
            else None
        )
        if fault == "content_filter":  # the API withheld the answer; what was thought is still billed
            finish, content, n_content = "content_filter", "", 0
        if finish in ("length", "content_filter"):
            verdict = "unanswered"
        fields = {
            "reasoning": reasoning,
            "content": content,
            "finish_reason": finish,
            "completion_tokens": n_reason + n_content,
        }
        return fields, verdict

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        counters = self.counters
        counters.requests_total += 1
        counters.in_flight += 1
        try:
            raw = await request.read()
            body: Any
            try:
                body = _loads(raw)
            except ValueError:
                body = None
            fp = request.headers.get("X-M1-Request-Id")
            if not fp:
                fp = request_fingerprint(body) if isinstance(body, dict) else hashlib.sha256(raw).hexdigest()
            attempt = counters.attempts_by_request.get(fp, 0)
            counters.attempts_by_request[fp] = attempt + 1

            if self._auth_header is not None:
                sent = request.headers.get("Authorization", "")
                if not hmac.compare_digest(sent.encode(), self._auth_header.encode()):
                    return self._error(
                        fp,
                        "unauthorized",
                        401,
                        "Incorrect API key provided (rehearsal auth_token).",
                        code="invalid_api_key",
                    )
            if body is None:
                return self._error(fp, "bad_request", 400, f"request {fp[:16]}: the body is not valid JSON")
            try:
                parsed = self._parse(body, kind, fp)
                if self.cfg.vary_by_request_id:
                    parsed.salt = fp
            except _BadRequest as exc:
                return self._error(fp, "bad_request", 400, str(exc), param=exc.param)
            if self.cfg.strict_models and parsed.model not in self._known_models:
                return self._error(
                    fp,
                    "model_not_found",
                    404,
                    f"request {fp[:16]}: model {parsed.model!r} is not served here; known: {sorted(self._known_models)}",
                    code="model_not_found",
                )
            for key in self.cfg.bad_request_keys:
                if key in parsed.prompt_text:
                    return self._error(
                        fp,
                        "bad_request",
                        400,
                        f"request {fp[:16]}: content holds {key!r}, which this rehearsal rejects (bad_request_keys)",
                    )

            fault = self._pick_fault(fp, attempt)
            if fault == "rate_limit":
                retry = self.cfg.retry_after_s
                headers = {
                    "Retry-After": f"{retry:g}",
                    "retry-after-ms": str(int(retry * 1000)),
                    "x-ratelimit-remaining-requests": "0",
                }
                return self._error(
                    fp,
                    "rate_limit",
                    429,
                    f"Rate limit reached for requests (rehearsal fault); retry after {retry:g} s.",
                    type_="requests",
                    code="rate_limit_exceeded",
                    headers=headers,
                )
            if fault == "server_error":
                return self._error(
                    fp, "server_error", 500, "The server had an error processing your request (rehearsal fault).",
                    type_="server_error",
                )  # fmt: skip
            if fault == "unavailable":
                return self._error(
                    fp, "unavailable", 503, "The engine is currently overloaded (rehearsal fault).",
                    type_="server_error", code="overloaded",
                )  # fmt: skip

            choices, prompt_tokens, completion_tokens, verdicts = self._choices(parsed, kind, fault)
            delay = self.cfg.latency_ms + self.cfg.latency_per_token_ms * completion_tokens
            if self.cfg.latency_jitter_ms:
                u = _uniforms(self.cfg.seed, "latency", fp, attempt)[1]
                delay += self.cfg.latency_jitter_ms * (2.0 * u - 1.0)
            if delay > 0:
                await asyncio.sleep(delay / 1000.0)

            if fault == "connection_reset":
                self._count(fp, "connection_reset")
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=499)  # never reaches the client: the connection is gone
            if fault == "slow":
                await asyncio.sleep(self.cfg.slow_s)
                if request.transport is None or request.transport.is_closing():
                    fault = "slow_abandoned"

            payload = {
                "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{fp[:24]}-{attempt}",
                "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": int(time.time()),
                "model": parsed.model,
                "choices": [] if fault == "empty_choices" else choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
            data = _dumps(payload)
            if fault == "malformed_json":
                data = data[: max(1, len(data) // 2)]
            if fault is None or fault == "slow":
                truncated = any(c["finish_reason"] == "length" for c in choices)
                outcome = "max_tokens" if truncated else ("slow" if fault else "ok")
            else:
                outcome = fault
            self._count(fp, outcome)
            counters.prompt_tokens += prompt_tokens
            counters.completion_tokens += completion_tokens
            if outcome in SUCCESS_OUTCOMES:
                for verdict in verdicts:
                    counters.answers[verdict] = counters.answers.get(verdict, 0) + 1
            return web.Response(body=data, content_type="application/json")
        finally:
            counters.in_flight -= 1

    def _choices(
        self, p: _Parsed, kind: str, fault: str | None
    ) -> tuple[list[dict[str, Any]], int, int, list[str]]:
        choices, verdicts, completion_tokens = [], [], 0
        for index in range(p.n):
            fields, verdict = self._answer(p, index, fault)
            verdicts.append(verdict)
            completion_tokens += fields["completion_tokens"]
            if kind == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": fields["content"]}
                if fields["reasoning"] is not None:
                    message["reasoning_content"] = fields["reasoning"]
                choices.append(
                    {
                        "index": index,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": fields["finish_reason"],
                    }
                )
            else:
                text = fields["content"]
                if fields["reasoning"] is not None:
                    text = f"<think>\n{fields['reasoning']}\n</think>\n\n{text}"
                choices.append(
                    {"index": index, "text": text, "logprobs": None, "finish_reason": fields["finish_reason"]}
                )
        return choices, estimate_tokens(p.prompt_text), completion_tokens, verdicts

    def _count(self, fp: str, outcome: str) -> None:
        by_outcome = self.counters.by_outcome
        by_outcome[outcome] = by_outcome.get(outcome, 0) + 1
        if outcome in SUCCESS_OUTCOMES:
            successes = self.counters.successes_by_request
            successes[fp] = successes.get(fp, 0) + 1

    def _error(
        self,
        fp: str,
        outcome: str,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self._count(fp, outcome)
        body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        return web.Response(
            status=status, body=_dumps(body), content_type="application/json", headers=headers
        )


def _json_response(obj: Any) -> web.Response:
    return web.Response(body=_dumps(obj), content_type="application/json")


def _new_event_loop() -> asyncio.AbstractEventLoop:
    return _uvloop.new_event_loop() if _uvloop is not None else asyncio.new_event_loop()


async def _start_site(app: RehearsalApp, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app.build(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{bound_host}:{bound_port}/v1"


# --------------------------------------------------------------------------------------------- python API


class RehearsalServer:
    """The rehearsal server on its own event loop in a daemon thread of this process.

    >>> with RehearsalServer(RehearsalConfig(latency_ms=0)) as server:
    ...     client = openai.OpenAI(base_url=server.url, api_key="x")

    For load tests run it in its own process instead (:func:`spawn_rehearsal_server`): in a thread it shares
    the GIL with the client.
    """

    def __init__(self, cfg: RehearsalConfig | None = None, **overrides: Any) -> None:
        if cfg is None:
            cfg = RehearsalConfig(**overrides)
        elif overrides:
            cfg = RehearsalConfig.model_validate({**cfg.model_dump(), **overrides})
        self.cfg = cfg
        self._app: RehearsalApp | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The base URL for an OpenAI client, e.g. ``http://127.0.0.1:41234/v1``."""
        if self._url is None:
            raise RuntimeError("the rehearsal server is not running; call start() first")
        return self._url

    def start(self, timeout: float = 30.0) -> str:
        """Load the pool, bind, serve in a daemon thread; return the base URL."""
        if self._thread is not None:
            return self.url
        self._app = RehearsalApp(self.cfg)  # the pool loads here, so its errors reach the caller
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = _new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                assert self._app is not None
                self._runner, self._url = loop.run_until_complete(
                    _start_site(self._app, self.cfg.host, self.cfg.port)
                )
            except BaseException as exc:  # handed to the caller of start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name="m1-rehearse", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"rehearsal server did not start within {timeout} s")
        if failure:
            self._thread = None
            raise RuntimeError(
                f"rehearsal server failed to start on {self.cfg.host}:{self.cfg.port}: {failure[0]}"
            )
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and open connections, stop the loop, join the thread."""
        loop, runner, thread = self._loop, self._runner, self._thread
        if thread is None or loop is None:
            return
        if runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = self._loop = self._runner = None
        self._url = None

    def stats(self, per_request: bool = True) -> dict[str, Any]:
        """The /stats counters, read on the server's loop (no race with running handlers)."""
        if self._app is None:
            raise RuntimeError("the rehearsal server was never started")
        if self._loop is None:
            return self._app.counters.snapshot(per_request)

        async def snap() -> dict[str, Any]:
            assert self._app is not None
            return self._app.counters.snapshot(per_request)

        return asyncio.run_coroutine_threadsafe(snap(), self._loop).result(10)

    def reset_stats(self) -> None:
        if self._app is not None and self._loop is not None:

            async def reset() -> None:
                assert self._app is not None
                self._app.counters.reset()

            asyncio.run_coroutine_threadsafe(reset(), self._loop).result(10)

    def __enter__(self) -> RehearsalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_forever(cfg: RehearsalConfig, *, ready_file: str | Path | None = None) -> dict[str, Any]:
    """Serve in this process until SIGINT or SIGTERM; print the URL, then the stats summary. Returns it."""
    app = RehearsalApp(cfg)

    async def main() -> dict[str, Any]:
        runner, url = await _start_site(app, cfg.host, cfg.port)
        pool = f", pool of {len(app.pool)} questions" if app.pool else ", no pool"
        print(f"m1 rehearse: OpenAI-compatible API at {url}{pool} (Ctrl-C to stop)", flush=True)
        if ready_file is not None:
            tmp = Path(f"{ready_file}.tmp")
            tmp.write_text(url, encoding="utf-8")
            tmp.replace(ready_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        summary = app.counters.snapshot(per_request=False)
        await runner.cleanup()
        return summary

    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        summary = runner.run(main())
    print("m1 rehearse: stopped; stats: " + json.dumps(summary, sort_keys=True), flush=True)
    return summary


# -------------------------------------------------------------------------------------------------------- CLI


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML (or JSON) file with RehearsalConfig fields")
    parser.add_argument(
        "--config-json", help="RehearsalConfig fields as a JSON string (applied after --config)"
    )
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 0: a free one)")
    parser.add_argument("--pool", help="Parquet file or folder of the canonical questions table")
    parser.add_argument("--correct-rate", type=float, help="share of correct answers (default 0.62)")
    parser.add_argument("--latency-ms", type=float, help="mean latency (default 100)")
    parser.add_argument("--latency-jitter-ms", type=float, help="+/- uniform jitter (default 50)")
    parser.add_argument(
        "--reasoning-tokens", type=float, help="mean reasoning length in tokens (default 1400)"
    )
    parser.add_argument("--no-reasoning", action="store_true", help="answer as a plain scorer")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help=f"inject a fault at a rate per attempt, repeatable; kinds: {', '.join(FAULT_KINDS)}",
    )
    parser.add_argument("--seed", type=int, help="seed of every deterministic decision")
    parser.add_argument("--ready-file", help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> RehearsalConfig:
    """Merge --config, --config-json and the explicit flags (in that order) into a RehearsalConfig."""
    raw: dict[str, Any] = {}
    if args.config:
        raw = RehearsalConfig.from_yaml(args.config).to_json_dict()
    if args.config_json:
        try:
            extra = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config-json is not valid JSON: {exc}") from exc
        raw.update(extra)
    flags = {
        "host": args.host,
        "port": args.port,
        "pool": args.pool,
        "correct_rate": args.correct_rate,
        "latency_ms": args.latency_ms,
        "latency_jitter_ms": args.latency_jitter_ms,
        "reasoning_tokens_mean": args.reasoning_tokens,
        "seed": args.seed,
    }
    raw.update({k: v for k, v in flags.items() if v is not None})
    if args.no_reasoning:
        raw["reasoning"] = False
    if args.fault:
        faults = dict(raw.get("faults") or {})
        for item in args.fault:
            kind, sep, rate = item.partition("=")
            if not sep or kind not in FAULT_KINDS:
                raise ValueError(
                    f"--fault {item!r}: expected KIND=RATE with KIND one of {', '.join(FAULT_KINDS)}"
                )
            try:
                faults[kind] = float(rate)
            except ValueError as exc:
                raise ValueError(f"--fault {item!r}: the rate must be a number in [0, 1]") from exc
        raw["faults"] = faults
    try:
        return RehearsalConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"rehearsal config: {problems}") from exc


def _cli(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
        run_forever(cfg, ready_file=args.ready_file)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"m1 rehearse: {exc}", file=sys.stderr)
        return 2
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``rehearse`` subcommand to an argparse subparsers object; its ``func`` runs the server."""
    parser = subparsers.add_parser(
        "rehearse",
        help="serve a free, deterministic OpenAI-compatible teacher/scorer to rehearse a run",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _add_options(parser)
    parser.set_defaults(func=_cli)
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m curation.devtools.rehearse", description=__doc__.split("\n\n")[0]
    )
    _add_options(parser)
    return _cli(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    sys.exit(main())
