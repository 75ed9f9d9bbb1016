"""Model paths checked on the driver, before any Ray worker starts.

A model is a local Hugging Face folder (``config.json`` inside) or a hub id ``org/name``. A local path that
does not exist, is a file, or cannot be read is an error naming the config key and the path; so is a hub id
under ``HF_HUB_OFFLINE=1`` that is not in the local Hugging Face cache (the workers could not load it either).
With hub access, a hub id is left to transformers/vLLM (they download it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from curation.errors import UserError

# org/name as the hub spells repo ids; a path with more parts, or starting with . / ~, is a local path.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelPathError(UserError):
    """A configured model is neither a readable local model folder nor a usable hub id."""


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no hub access (as the tests and the demo run)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def in_hf_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id``'s config.json."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an odd id or cache: treat as not cached
        return False


def check_model_path(value: str, key: str, *, source: str = "") -> None:
    """Raise ModelPathError (naming ``source``, ``key`` and the path) unless ``value`` is a readable local model
    folder, or a hub id that can be loaded (in the cache, or any ``org/name`` when the hub is reachable)."""
    where = f"{source}: {key}" if source else key
    if not value.strip():
        raise ModelPathError(f"{where} is empty; give a local model folder or a hub id (org/name)")
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelPathError(f"{where} {value!r} is a file, not a model folder (config.json, weights)")
        try:
            names = os.listdir(path)
            if "config.json" in names:
                with open(path / "config.json", "rb"):
                    pass
        except PermissionError:
            raise ModelPathError(
                f"{where} {value!r}: permission denied; the model folder cannot be read by this user"
            ) from None
        except OSError as exc:
            raise ModelPathError(f"{where} {value!r}: cannot read ({exc.strerror or exc})") from None
        if "config.json" not in names:
            raise ModelPathError(
                f"{where} {value!r} is not a Hugging Face model folder (no config.json in it)"
            )
        return
    if not HUB_ID.match(value):
        raise ModelPathError(f"{where} {value!r}: no such folder (and not a hub id of the form org/name)")
    if hub_offline() and not in_hf_cache(value):
        raise ModelPathError(
            f"{where} {value!r}: no such local folder, and HF_HUB_OFFLINE is set while the local Hugging Face "
            "cache does not hold it; give the model's folder, or download it first (huggingface-cli download "
            f"{value}) with hub access"
        )


TINY_MODEL_HINT = (
    "for the demo, `m1 demo` builds the tiny model (RUN_DIR/tiny-model) and runs with it, or build one with "
    "`m1 tiny-model DIR` and set the engine's model to DIR"
)


def engines_in_use(cfg: Any, stages: list[str]) -> list[tuple[str, str]]:
    """(engine name, the config key that uses it) for every engine the ``stages`` of ``cfg`` send requests to."""
    used: list[tuple[str, str]] = []
    if "score" in stages:
        used += [(s.engine, f"score.scorers.{i}.engine ({s.name})") for i, s in enumerate(cfg.score.scorers)]
    if "teacher" in stages and cfg.teacher.engine:
        used.append((cfg.teacher.engine, "teacher.engine"))
    if "classify" in stages and cfg.classify.method == "llm" and cfg.classify.engine:
        used.append((cfg.classify.engine, "classify.engine"))
    return used


def check_engine_models(cfg: Any, stages: list[str], *, source: str = "") -> None:
    """Before Ray or vLLM start: every vLLM engine the ``stages`` use must name a readable local model folder or a
    loadable hub id (`check_model_path`); the error names the engine, the stage key using it, the path and what
    to do. OpenAI-compatible engines name a served model, nothing local: not checked."""
    checked: set[str] = set()
    for name, used_by in engines_in_use(cfg, stages):
        if name in checked or name not in cfg.engines:
            continue  # an unknown engine name is the stage's own error
        checked.add(name)
        engine = cfg.engine(name)
        if engine.kind != "vllm":
            continue
        try:
            check_model_path(engine.model, f"engines.{name}.model", source=source)
        except ModelPathError as exc:
            raise ModelPathError(
                f"{exc} (vLLM engine {name!r}, used by {used_by}); {TINY_MODEL_HINT}"
            ) from None
