"""vLLM engine helpers shared by the rollout and teacher pools (one engine per actor).

Token ids in, token ids out: prompts are tokenised once by the controller with the run's
tokenizer, so student and teacher see identical tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Generation:
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # of the sampled tokens, at the sampling temperature
    finish_reason: str
    routes: np.ndarray | None = None  # [prompt + response - 1, MoE layers, K], zero ids included


# vLLM's own default for an engine's max_logprobs: enough for sampling and scoring.
DEFAULT_LOGPROBS_LIMIT = 20


class EngineWorker:
    """A Ray actor that owns one vLLM engine (``start_engine``'s options)."""

    def __init__(self, model_dir: str, **engine_options):
        self.llm = start_engine(model_dir, **engine_options)

    def ready(self) -> int:
        import os

        return os.getpid()


def start_engine(
    model_dir: str,
    *,
    seed: int,
    max_model_len: int,
    kv_cache_gib: int,
    tensor_parallel_size: int = 1,
    capture_routes: bool = False,
    full_vocab_logprobs: bool = False,
    logprobs_limit: int = DEFAULT_LOGPROBS_LIMIT,
    weight_transfer_backend: str | None = None,
):
    """An in-process vLLM engine inside this (actor) process; ``weight_transfer_backend``
    (``nccl``, ``ipc``, ``zeda_gloo``) enables vLLM's weight transfer API on it."""
    from zeda_rl.eval.generation import vllm_engine
    from zeda_rl.vllm_plugin.worker import WORKER_EXTENSION

    extra = {}
    if weight_transfer_backend is not None:
        extra["weight_transfer_config"] = {"backend": weight_transfer_backend}
    llm = vllm_engine(
        model_dir,
        seed=seed,
        max_model_len=max_model_len,
        kv_cache_gib=kv_cache_gib,
        dtype="float32" if _on_cpu() else "bfloat16",
        tensor_parallel_size=tensor_parallel_size,
        skip_tokenizer_init=True,
        # Sampled-token logprobs after temperature scaling: the distribution sampled from.
        logprobs_mode="processed_logprobs",
        max_logprobs=-1 if full_vocab_logprobs else logprobs_limit,
        worker_extension_cls=WORKER_EXTENSION,
        # Route capture needs every position computed; cached prefixes would be skipped.
        enable_prefix_caching=not capture_routes,
        **extra,
    )
    if capture_routes:
        llm.collective_rpc("zeda_enable_route_capture")
    return llm


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def sample(
    llm,
    prompts: list[list[int]],
    *,
    temperature: float,
    max_tokens: int,
    stop_token_ids: list[int],
    capture_routes: bool = False,
    seed: int | None = None,
) -> list[Generation]:
    """One sampled response per prompt (repeat a prompt for several samples).

    Randomness comes from the engine's seed (set at start-up), or with ``seed`` from that
    seed for this call alone: a resumed run then draws the same samples at each step as an
    uninterrupted one. (vLLM's per-request seeds need generator offsets that CPU generators
    lack: chunked prefill fails with them.)
    """
    from vllm import SamplingParams

    if seed is not None:
        llm.collective_rpc("zeda_reseed", args=(seed,))

    params = SamplingParams(
        temperature=temperature,
        max_tokens=max_tokens,
        logprobs=0,
        stop_token_ids=stop_token_ids,
        detokenize=False,
    )
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    routes = _take_routes(llm) if capture_routes else {}
    result = []
    for prompt, out in zip(prompts, outputs, strict=True):
        completion = out.outputs[0]
        ids = list(completion.token_ids)
        steps = zip(completion.logprobs, ids, strict=True)
        fed = tuple(prompt + ids[:-1])
        if capture_routes and fed not in routes:
            raise RuntimeError("rollout routes missing for a request (route capture mismatch)")
        result.append(
            Generation(
                prompt,
                ids,
                [step[t].logprob for step, t in steps],
                str(completion.finish_reason),
                routes.get(fed),
            )
        )
    return result


def _take_routes(llm) -> dict[tuple[int, ...], np.ndarray]:
    (recorded,) = llm.collective_rpc("zeda_take_routes")
    return {
        tuple(np.frombuffer(tokens, np.int64).tolist()): np.frombuffer(r, np.int16).reshape(s)
        for tokens, r, s in recorded
    }


def score(
    llm, sequences: list[tuple[list[int], list[int]]], *, temperature: float
) -> list[list[float]]:
    """log p(response token | everything before it) at ``temperature`` for each
    (prompt, response), from one prefill per sequence.

    vLLM's prompt log-probabilities come from the raw logits; at temperature 1 they are the
    answer, at any other temperature the full distribution is requested and rescaled
    (log softmax(log p / T) equals log softmax(logits / T)), which needs an engine started
    with ``full_vocab_logprobs``.
    """
    import torch
    from vllm import SamplingParams

    full = temperature != 1.0
    params = SamplingParams(max_tokens=1, prompt_logprobs=-1 if full else 0, detokenize=False)
    seqs = [p + r for p, r in sequences]
    outputs = llm.generate([{"prompt_token_ids": s} for s in seqs], params, use_tqdm=False)
    result = []
    for (prompt, _), seq, out in zip(sequences, seqs, outputs, strict=True):
        values = []
        for pos in range(len(prompt), len(seq)):
            entry = out.prompt_logprobs[pos]
            if not full:
                values.append(entry[seq[pos]].logprob)
                continue
            ids = torch.tensor(list(entry.keys()))
            raw = torch.tensor([lp.logprob for lp in entry.values()], dtype=torch.float64)
            scaled = torch.log_softmax(raw / temperature, dim=0)
            values.append(float(scaled[(ids == seq[pos]).nonzero()[0, 0]]))
        result.append(values)
    return result


def score_topk(
    llm, sequences: list[tuple[list[int], list[int]]], *, k: int, prompt_positions: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The model's ``k`` most likely next tokens and their log-probabilities (temperature 1)
    at every position that predicts a response token (``[len(response), k]`` int32 ids and
    float32 log-probabilities), or with ``prompt_positions`` at every fed position
    (``[len(prompt) + len(response) - 1, k]``), from one prefill per (prompt, response)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False)
    seqs = [p + r for p, r in sequences]
    outputs = llm.generate([{"prompt_token_ids": s} for s in seqs], params, use_tqdm=False)
    result = []
    for (prompt, _), seq, out in zip(sequences, seqs, outputs, strict=True):
        # prompt_logprobs[t] is the distribution of token t given tokens before it.
        first = 1 if prompt_positions else len(prompt)
        rows = len(seq) - first
        ids = np.zeros((rows, k), np.int32)
        values = np.zeros((rows, k), np.float32)
        for row, pos in enumerate(range(first, len(seq))):
            # vLLM adds the actual token to the top-k when it ranks lower; keep ranks 1..k.
            top = sorted(
                (lp.rank, token, lp.logprob)
                for token, lp in out.prompt_logprobs[pos].items()
                if lp.rank is not None and lp.rank <= k
            )
            if len(top) != k:
                raise RuntimeError(f"vLLM returned {len(top)} of the top-{k} log-probabilities")
            ids[row] = [token for _, token, _ in top]
            values[row] = [value for _, _, value in top]
        result.append((ids, values))
    return result
