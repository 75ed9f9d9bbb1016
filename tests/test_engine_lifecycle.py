"""Engines start and stop in the engine layer: `running` brings a rehearsal engine's server up and down."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from pydantic import TypeAdapter

from curation.engines import map_requests, running
from curation.engines.config import EngineConfig, OpenAIEngineConfig, RehearsalEngineConfig


def engine(raw: dict) -> object:
    return TypeAdapter(EngineConfig).validate_python(raw)


def healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_an_openai_engine_is_ready_as_configured() -> None:
    cfg = engine({"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"})
    with running(cfg) as live:
        assert live is cfg
    with running(None) as nothing:
        assert nothing is None


def test_a_rehearsal_engine_is_its_server_while_running(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = engine(
        {
            "kind": "rehearsal",
            "model": "deepseek-reasoner",
            "max_concurrency": 7,
            "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
            "server": {"latency_ms": 0, "faults": {"rate_limit": 0.1}},
        }
    )
    assert isinstance(cfg, RehearsalEngineConfig)
    with running(cfg) as live:
        assert isinstance(live, OpenAIEngineConfig)
        assert (live.model, live.max_concurrency, live.api_key_env) == ("deepseek-reasoner", 7, None)
        assert live.price is not None and live.price.output_per_mtok == 2.0
        assert healthy(live.base_url)
    assert not healthy(live.base_url)  # stopped on the way out
    assert "REHEARSAL" in capsys.readouterr().out


def test_a_rehearsal_engine_takes_no_base_url_and_refuses_unknown_server_keys() -> None:
    with pytest.raises(ValueError, match="base_url"):
        engine({"kind": "rehearsal", "base_url": "http://x/v1"})
    with pytest.raises(ValueError, match="correct_rat"):
        engine({"kind": "rehearsal", "server": {"correct_rat": 0.5}})


def test_a_lazy_map_over_a_rehearsal_nobody_started_is_refused() -> None:
    with pytest.raises(ValueError, match="must be started first"):
        map_requests(None, engine({"kind": "rehearsal"}), ledger_uri="unused")  # type: ignore[arg-type]
