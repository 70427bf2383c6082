"""Turns `--model NAME|PATH` into a checkpoint directory and its serving facts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from glmserve.common.catalogue import CATALOGUE, TINY_MODEL, get_model
from glmserve.common.errors import ConfigError
from glmserve.serving.tiny.create import MANIFEST, Progress, create_tiny, default_cache_dir


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    name: str  # what clients put in "model"
    path: Path
    max_context: int
    thinking_default: bool


def _read_config(path: Path) -> dict[str, object]:
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} has no config.json; --model needs a Hugging Face checkpoint directory") from None
    except ValueError as exc:
        raise ConfigError(f"{path / 'config.json'} is not valid JSON: {exc}") from None
    if config.get("model_type") != "glm4_moe":
        raise ConfigError(
            f"{path} holds a {config.get('model_type')!r} model; glmserve serves GLM-4.6 (model_type glm4_moe)"
        )
    return config


def resolve_model(model: str, served_name: str | None = None, *, progress: Progress = print) -> ResolvedModel:
    """A catalogue name or a checkpoint path. Only glm-4.6-tiny is built locally; nothing is downloaded."""
    if model == TINY_MODEL:
        spec = get_model(TINY_MODEL)
        path = create_tiny(default_cache_dir(), progress=progress)
        return ResolvedModel(served_name or spec.name, path, spec.max_context, spec.thinking_default)
    if model in CATALOGUE:
        raise ConfigError(
            f"{model} weights are not on this machine and glmserve downloads nothing: "
            f"download {CATALOGUE[model].source.removeprefix('hf://')} and pass its directory as --model PATH"
        )
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--model {model!r} is neither a catalogue model ({', '.join(CATALOGUE)}) nor a directory")
    config = _read_config(path)
    is_tiny = (path / MANIFEST).exists()
    max_context = config.get("max_position_embeddings")
    if not isinstance(max_context, int):
        raise ConfigError(f"{path / 'config.json'} lacks an integer max_position_embeddings")
    return ResolvedModel(
        name=served_name or (TINY_MODEL if is_tiny else path.resolve().name),
        path=path.resolve(),
        max_context=max_context,
        thinking_default=not is_tiny and get_model("glm-4.6").thinking_default,
    )
