"""`glmserve model create-tiny`: a complete, deterministic glm-4.6-tiny checkpoint directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from glmserve.common.catalogue import STOP_TOKENS, TINY_MODEL, get_model
from glmserve.serving.tiny.tokenizer import write_tokenizer
from glmserve.serving.tiny.weights import random_weights

# Bump when the files this writes change, so cached checkpoints are rebuilt.
FORMAT_VERSION = 1
DEFAULT_SEED = 0
MANIFEST = "glmserve-tiny.json"

Progress = Callable[[str], None]


def chat_template() -> str:
    return resources.files("glmserve.serving.tiny").joinpath("chat_template.jinja").read_text()


def _manifest(seed: int) -> dict[str, object]:
    return {"model": TINY_MODEL, "format_version": FORMAT_VERSION, "seed": seed}


def is_current(path: Path, seed: int = DEFAULT_SEED) -> bool:
    try:
        found = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return {k: found.get(k) for k in ("model", "format_version", "seed")} == _manifest(seed)


def _write(out: Path, seed: int, progress: Progress) -> dict[str, object]:
    spec = get_model(TINY_MODEL)
    arch = spec.arch
    progress(f"training a {arch.vocab_size}-token BPE tokenizer with GLM-4.6's special tokens")
    ids = write_tokenizer(out, arch.vocab_size, seed, chat_template())

    progress(f"drawing {arch.total_params():,} random weights (seed {seed})")
    tensors = dict(random_weights(arch, seed, torch.bfloat16))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    config = arch.hf_config() | {
        "torch_dtype": "bfloat16",
        "bos_token_id": None,
        "pad_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids[t] for t in STOP_TOKENS],
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"eos_token_id": [ids[t] for t in STOP_TOKENS], "pad_token_id": ids["<|endoftext|>"]}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")

    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    manifest = _manifest(seed) | {"weights_sha256": digest, "parameters": arch.total_params()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def create_tiny(path: Path, seed: int = DEFAULT_SEED, *, force: bool = False, progress: Progress = print) -> Path:
    """Builds the checkpoint in a temporary sibling and renames it into place.

    A crash leaves either the old directory or none: never a half-written checkpoint.
    Refuses to overwrite a non-empty directory that is not a glmserve tiny checkpoint.
    """
    path = path.expanduser().resolve()
    if is_current(path, seed) and not force:
        progress(f"{TINY_MODEL} is already at {path}")
        return path
    if path.exists() and any(path.iterdir()) and not (path / MANIFEST).exists():
        raise FileExistsError(f"{path} exists and is not a glmserve tiny checkpoint; choose an empty directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _write(tmp, seed, progress)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(f"wrote {TINY_MODEL} to {path}")
    return path


def default_cache_dir() -> Path:
    base = os.environ.get("GLMSERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "glmserve"
    )
    return Path(base) / "models" / TINY_MODEL
