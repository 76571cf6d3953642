"""Trainer backends by name (``trainer.backend``): each is imported only when chosen."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from zeda_rl.trainer.interface import RankSpec, TrainerBackend

# name -> "module:class"; a backend's parallel sizes are its own constructor arguments.
BACKENDS: dict[str, str] = {
    "torch": "zeda_rl.trainer.torch_backend:TorchBackend",
    "megatron": "zeda_rl.trainer.megatron.backend:MegatronBackend",
}


def register_backend(name: str, target: str) -> None:
    """Add a backend (``"package.module:Class"``) under ``name``."""
    if name in BACKENDS:
        raise ValueError(f"trainer backend {name!r} registered twice")
    BACKENDS[name] = target


def backend_class(name: str) -> Callable[..., TrainerBackend]:
    if name not in BACKENDS:
        raise ValueError(f"trainer.backend={name!r}: available {tuple(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(import_module(module), cls)


def make_backend(
    kind: str, model_dir: str, spec: RankSpec, parallel: dict[str, int] | None = None
) -> TrainerBackend:
    """The backend ``kind`` on ``model_dir`` for the rank ``spec``; ``parallel``: its
    model-parallel sizes (megatron: expert_parallel, tensor_parallel, pipeline_parallel)."""
    return backend_class(kind)(model_dir, spec, **(parallel or {}))
