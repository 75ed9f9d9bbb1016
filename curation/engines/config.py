"""Engine configurations: which engine answers a stage's requests, and how hard it may push.

`EngineConfig` is a tagged union on ``kind``: ``openai`` (any OpenAI-compatible HTTP API), ``vllm``
(local vLLM on Ray) or ``rehearsal`` (the rehearsal server, started and stopped with the engine). Unknown keys are errors that name the key, so a typo never silently drops a limit.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.engines.rehearsal import RehearsalConfig
from curation.engines.vllm_engine import VLLMEngineConfig
from curation.errors import looks_secret, redact_secrets

# What an environment variable's name may be (POSIX portable names); a pasted key never matches it.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Header names that carry credentials: their values are refused in configs (api_key_env is the way to pass a key).
_CREDENTIAL_HEADER = re.compile(r"(?i)auth|api[-_]?key|token|secret|cookie|password|signature|credential")


class Price(BaseModel):
    """USD per million tokens. Reasoning tokens are billed as output (completion) tokens."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        """Cost of one response; None when the engine reported no usage at all."""
        if prompt_tokens is None and completion_tokens is None:
            return None
        return (
            (prompt_tokens or 0) * self.input_per_mtok + (completion_tokens or 0) * self.output_per_mtok
        ) / 1e6


class HTTPClientSettings(BaseModel):
    """How an OpenAI-compatible client pushes an endpoint: the fields `openai` and `rehearsal` engines share."""

    # hide_input_in_errors: a key pasted into any field (api_key_env above all) must never be echoed back
    # by pydantic's error text (`input_value='sk-...'`), whatever code prints the error.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    model: str | None = Field(
        default=None, description="model name sent to the API; default: the request's own model"
    )
    transport: Literal["openai-sdk", "aiohttp"] = Field(
        default="openai-sdk",
        description="openai-sdk: the official client (aiohttp backend); aiohttp: bare aiohttp, ~1/3 the CPU",
    )
    max_concurrency: int = Field(default=64, ge=1, description="requests in flight, over all actors")
    rpm: float | None = Field(default=None, gt=0, description="requests per minute, over all actors")
    tpm: float | None = Field(default=None, gt=0, description="tokens (prompt + completion) per minute")
    burst_s: float = Field(
        default=1.0, gt=0, description="bucket depth in seconds of rpm/tpm (burst allowed)"
    )
    timeout_s: float = Field(default=600.0, gt=0, description="per attempt; long enough for R1 reasoning")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=6, ge=1)
    backoff_base_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    retry_after_max_s: float = Field(default=600.0, ge=0, description="cap on a server's Retry-After")
    actors: int = Field(default=1, ge=1, description="Ray actors sharing the fan-out")
    actor_num_cpus: float = Field(default=0.5, gt=0, description="CPUs reserved per actor (mostly I/O)")
    price: Price | None = None
    expected_completion_tokens: int | None = Field(
        default=None, ge=0, description="mean completion tokens per request, for cost projection and tpm"
    )
    tokenizer_path: str | None = Field(
        default=None, description="local tokenizer (tokenizer.json or HF dir) for prompt-token estimates"
    )
    flush_every_rows: int = Field(default=500, ge=1, description="ledger flush after this many new rows")
    flush_every_s: float = Field(default=2.0, gt=0, description="ledger flush at least this often")
    stop_grace_s: float = Field(default=3.0, ge=0, description="on Ctrl-C, in-flight requests get this long")
    write_ahead: bool = Field(
        default=True,
        description="log each answer to a write-ahead segment within milliseconds (local ledgers); "
        "false: only the Parquet flushes, so a kill -9 loses up to flush_every_s of paid answers",
    )
    write_ahead_fsync: bool = Field(
        default=True, description="fsync each write-ahead group (survives a machine crash, not only kill -9)"
    )
    stop_with_driver: bool = Field(
        default=True, description="workers stop sending as soon as the driver process is gone (kill -9)"
    )
    extra_headers: dict[str, str] = Field(default_factory=dict)
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("extra_headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        banned = [k for k, v in value.items() if _CREDENTIAL_HEADER.search(k) or looks_secret(str(v))]
        if banned:
            raise ValueError(
                f"extra_headers must not carry credentials ({[redact_secrets(k) for k in banned]}); "
                "use api_key_env (the values are not shown)"
            )
        return value

    @property
    def per_actor_concurrency(self) -> int:
        return max(1, -(-self.max_concurrency // self.actors))


class OpenAIEngineConfig(HTTPClientSettings):
    """An OpenAI-compatible HTTP endpoint (OpenAI, DeepSeek, vLLM serve, SGLang, a running `m1 rehearse`, ...)."""

    kind: Literal["openai"] = "openai"
    base_url: str = Field(description="API root ending in /v1, e.g. https://api.deepseek.com/v1")
    api_key_env: str | None = Field(
        default=None,
        description="NAME of the environment variable holding the API key (never the key itself)",
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"base_url must be an http(s) URL such as https://host/v1, got {redact_secrets(repr(value))}"
            )
        # user:password@host or ?key=... would reach the ledger's `engine` column, logs and the manifest.
        if parts.username is not None or parts.password is not None or looks_secret(value):
            raise ValueError(
                "base_url must not carry credentials (user:password@, a key in the query); name the "
                "environment variable that holds the key in api_key_env (the value given is not shown)"
            )
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _check_api_key_env(cls, value: str | None) -> str | None:
        # A literal key pasted here would end up in logs and run records: accept variable names only.
        if value is not None and (not ENV_NAME.match(value) or looks_secret(value)):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (letters, digits, _) such as "
                "DEEPSEEK_API_KEY, never the key itself (the value given is not shown)"
            )
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    @property
    def engine_name(self) -> str:
        """The `engine` column of this engine's responses."""
        return f"openai:{self.host}"

    def api_key(self) -> str:
        """The key from the environment. Errors name the variable, never a value."""
        if self.api_key_env is None:
            # Local servers (vLLM serve, rehearsal) ignore the key, but the SDK insists on one.
            return "EMPTY"
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ValueError(
                f"engine {self.engine_name}: environment variable {self.api_key_env} is not set "
                f"(it must hold the API key); export it and rerun"
            )
        return value


class RehearsalEngineConfig(HTTPClientSettings):
    """The rehearsal server playing a model (no model, canned answers, injected faults): demos and rehearsals.

    The engine layer starts the server when the engine starts (`curation.engines.running`) and stops it after;
    in between the engine is an `openai` engine pointed at it, with these client settings. Never for a real
    dataset: every answer is made up.
    """

    kind: Literal["rehearsal"] = "rehearsal"
    server: RehearsalConfig = Field(
        default_factory=RehearsalConfig,
        description="the rehearsal server's settings (see `m1 rehearse`); without `pool`, the questions of "
        "the stage that starts the engine, when it has any",
    )

    @property
    def engine_name(self) -> str:
        return "rehearsal"

    def at(self, base_url: str) -> OpenAIEngineConfig:
        """The `openai` engine that talks to this rehearsal's server once it listens at ``base_url``."""
        return OpenAIEngineConfig(**self.model_dump(exclude={"kind", "server"}), base_url=base_url)


EngineConfig = Annotated[
    OpenAIEngineConfig | RehearsalEngineConfig | VLLMEngineConfig, Field(discriminator="kind")
]

__all__ = [
    "EngineConfig",
    "HTTPClientSettings",
    "OpenAIEngineConfig",
    "Price",
    "RehearsalEngineConfig",
    "VLLMEngineConfig",
]
