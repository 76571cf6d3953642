"""Response generation for evaluation, through vLLM (ZEDA students via the zeda_rl vLLM
plugin) or plain transformers, behind one ``generate(prompts, max_new_tokens)`` signature."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zeda_rl.data.tokenizer import chat_prompt


@torch.no_grad()
def hf_generate(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy chat completions with transformers (left padding, stop at the end-of-turn token)."""
    tokenizer.padding_side = "left"
    model.eval()
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        chunk = [chat_prompt(p) for p in prompts[i : i + batch_size]]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(
            model.device
        )
        generated = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        out += tokenizer.batch_decode(
            generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
    return out


def vllm_engine(
    model_dir: str,
    *,
    seed: int = 0,
    max_model_len: int | None = None,
    kv_cache_gib: int = 1,
    dtype: str = "float32",
    tensor_parallel_size: int = 1,
    **engine_kwargs,
):
    """An in-process vLLM engine (uniprocess executor at TP 1: ~3 s to start on CPU); close
    it with ``close_vllm_engine`` before starting another in the same process."""
    import os

    import torch

    # vLLM reads these at import/engine start; set them only where the caller did not.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    if (
        torch.cuda.is_available()
        and kv_cache_gib > 0
        and "kv_cache_memory_bytes" not in engine_kwargs
    ):
        # A fixed KV budget instead of a share of the whole GPU, so that engines (rollout,
        # teacher) and trainers can share one device; 0 keeps vLLM's gpu_memory_utilization.
        engine_kwargs["kv_cache_memory_bytes"] = kv_cache_gib * 2**30

    return LLM(
        model=str(model_dir),
        tokenizer=str(model_dir),
        dtype=dtype,
        seed=seed,
        max_model_len=max_model_len,
        tensor_parallel_size=tensor_parallel_size,
        distributed_executor_backend="uni" if tensor_parallel_size == 1 else None,
        # Eager by default: compiling costs more start-up than it saves on small runs.
        enforce_eager=engine_kwargs.pop("enforce_eager", True),
        # One checkpoint-loading bar per engine start is noise in a run's console.
        use_tqdm_on_load=engine_kwargs.pop("use_tqdm_on_load", False),
        **engine_kwargs,
    )


def close_vllm_engine(llm) -> None:
    """Shut an in-process engine down so another can start in the same process (vLLM keeps
    its parallel state in module globals; two live in-process engines corrupt each other)."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown()
    cleanup_dist_env_and_memory()


class Generator:
    """``generator(prompts, max_new_tokens) -> responses``; ``close()`` frees the engine."""

    def __init__(
        self,
        backend: str,
        model_dir: str,
        model=None,
        tokenizer=None,
        config_overrides: dict | None = None,
    ):
        """``config_overrides``: config fields the served model takes over its config.json
        (e.g. ``mask_zero_experts``, ``routing_top_p``); the hf backend's ``model`` must
        have been loaded with the same."""
        if backend not in ("vllm", "hf"):
            raise ValueError(f"eval backend {backend!r}: choose 'vllm' or 'hf'")
        if backend == "hf" and (model is None or tokenizer is None):
            raise ValueError("the hf backend needs the loaded model and tokenizer")
        self.backend, self.model, self.tokenizer = backend, model, tokenizer
        extra = {"hf_overrides": dict(config_overrides)} if config_overrides else {}
        self.llm = vllm_engine(model_dir, **extra) if backend == "vllm" else None

    def __call__(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        if self.llm is not None:
            return vllm_generate(self.llm, prompts, max_new_tokens)
        return hf_generate(self.model, self.tokenizer, prompts, max_new_tokens)

    def close(self) -> None:
        if self.llm is not None:
            close_vllm_engine(self.llm)
            self.llm = None


def vllm_generate(llm, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy chat completions through a vLLM engine (stops at the model's end-of-turn)."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True)
    outputs = llm.generate([chat_prompt(p) for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].text for o in outputs]


def vllm_generate_with_logprobs(
    llm, prompts: Sequence[str], max_new_tokens: int
) -> list[tuple[list[int], list[float]]]:
    """Greedy completions as (token ids, log-probabilities of those tokens)."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, logprobs=0)
    outputs = llm.generate([chat_prompt(p) for p in prompts], params, use_tqdm=False)
    result = []
    for o in outputs:
        ids = list(o.outputs[0].token_ids)
        logprobs = [step[tok].logprob for step, tok in zip(o.outputs[0].logprobs, ids, strict=True)]
        result.append((ids, logprobs))
    return result
