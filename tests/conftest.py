"""Shared fixtures: tiny static teachers of both families, saved once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Nothing may come from a model or data hub, also when pytest is run without the Makefile.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import zeda_rl  # noqa: F401  (registers the ZEDA architectures)
from zeda_rl.models.tiny import random_static_model

FAMILIES = ("qwen3_moe", "glm4_moe_lite")


build_static_model = random_static_model


def padded_batch(vocab: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences of length 9, two of them left-padded."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (3, 9), generator=g)
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[1, :3] = 0
    attention_mask[2, :6] = 0
    return input_ids, attention_mask


def tiny_samples(num: int, seed: int = 0):
    """Prompt/response samples with rollout and teacher logprobs and a teacher top-4 (trainer
    tests)."""
    from zeda_rl.trainer.batch import Sample

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(num):
        prompt = torch.randint(5, 250, (3 + i % 4,), generator=g).tolist()
        response = torch.randint(5, 250, (2 + i % 3,), generator=g).tolist()
        # Top-4 of a distribution that leaves a tail: distinct ids, descending log-probs.
        top_ids = torch.stack([torch.randperm(245, generator=g)[:4] + 5 for _ in response])
        top_probs = torch.rand(len(response), 4, generator=g).sort(-1, descending=True).values
        out.append(
            Sample(
                prompt,
                response,
                rollout_logprobs=(-torch.rand(len(response), generator=g) * 3 - 2).tolist(),
                teacher_logprobs=(-torch.rand(len(response), generator=g) * 3 - 2).tolist(),
                teacher_topk_ids=top_ids.numpy().astype("int32"),
                teacher_topk_logprobs=(top_probs / 5).log().numpy(),
            )
        )
    return out


def spawn_ranks(target, world: int, *args, timeout: float = 600) -> None:
    """Run ``target(rank, world, init_method, *args)`` in ``world`` fresh processes (one
    torch.distributed rank each) and require every one to exit cleanly."""
    import multiprocessing as mp

    from zeda_rl.trainer.distributed import local_init_method

    ctx = mp.get_context("spawn")
    init = local_init_method()
    procs = [ctx.Process(target=target, args=(r, world, init, *args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
        assert p.exitcode == 0, f"rank exited with {p.exitcode}"


def moe_case(tokens, hidden, inter, num_real, num_zero, top_k, zero_share, seed=0, skew=False):
    """Activations, routes (zero picks at about ``zero_share``), gate weights and expert
    weights for the experts backends' tests; ``skew`` puts every real pick on experts 0-1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    gate_up = torch.randn(num_real, 2 * inter, hidden, generator=g) / hidden**0.5
    down = torch.randn(num_real, hidden, inter, generator=g) / inter**0.5
    ids = []
    for _ in range(tokens):
        zero = int((torch.rand(top_k, generator=g) < zero_share).sum())
        pool = torch.arange(2 if skew else num_real)  # skew: everything on experts 0 and 1
        real = pool[torch.randperm(pool.numel(), generator=g)][: top_k - zero]
        zeros = num_real + torch.randperm(num_zero, generator=g)[:zero]
        ids.append(torch.cat([real, zeros])[torch.randperm(top_k, generator=g)])
    ids = torch.stack(ids)
    weights = torch.rand(tokens, top_k, generator=g)
    return x, ids, weights, gate_up, down


# Routing shapes every experts backend is checked on (tests/triton_cases.py, test_te_backend.py).
MOE_CASES = {
    "mixed": dict(tokens=13, hidden=40, inter=24, num_real=6, num_zero=3, top_k=3, zero_share=0.4),
    "all_zero": dict(tokens=5, hidden=32, inter=16, num_real=4, num_zero=2, top_k=2, zero_share=1),
    "no_zero": dict(tokens=9, hidden=32, inter=16, num_real=4, num_zero=2, top_k=2, zero_share=0),
    "one_expert": dict(
        tokens=20, hidden=32, inter=16, num_real=4, num_zero=2, top_k=1, zero_share=0.0, skew=True
    ),
    "decode": dict(tokens=1, hidden=32, inter=16, num_real=16, num_zero=8, top_k=4, zero_share=0.5),
    "odd_sizes": dict(
        tokens=3, hidden=33, inter=17, num_real=5, num_zero=2, top_k=2, zero_share=0.5
    ),
}


def assert_model_matches_reference_on(backend: str, family: str, tmp_path, monkeypatch) -> None:
    """A converted tiny ZEDA model of ``family`` with its experts on ``backend`` ('auto'
    forced to it): the torch reference's logits and every parameter gradient."""
    from zeda_kernels import moe_dispatch
    from zeda_rl.convert import convert
    from zeda_rl.models.registry import load_zeda_model

    build_static_model(family, 0).save_pretrained(tmp_path / "teacher")
    convert(tmp_path / "teacher", tmp_path / "zeda", log=lambda *_: None)
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(3))
    results = {}
    for name in ("torch", backend):
        monkeypatch.setattr(moe_dispatch, "default_backend", lambda hidden, b=name: b)
        model = load_zeda_model(str(tmp_path / "zeda"), dtype=torch.float32)
        out = model(input_ids=ids)
        out.logits.float().logsumexp(-1).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[name] = (out.logits.detach(), grads, out.routing)
    (ref_logits, ref_grads, routing), (logits, grads, _) = results["torch"], results[backend]
    assert any(float(r.zero_ratio) > 0 for r in routing)
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=0)
    assert set(grads) == set(ref_grads)
    for name, grad in ref_grads.items():
        assert torch.allclose(grads[name], grad, atol=1e-5, rtol=1e-4), name


def tokenized_zeda_pair(root: Path, gate_std: float | None = None):
    """A tiny Qwen3-MoE teacher with a BPE tokenizer trained on addition examples, saved to
    ``root/teacher`` and converted to ``root/student``; returns (teacher, tokenizer).
    ``gate_std`` redraws the routers (sharper routing than the default init)."""
    from transformers import Qwen3MoeForCausalLM

    from zeda_rl.convert import convert
    from zeda_rl.data.tasks import addition
    from zeda_rl.data.tokenizer import chat_example, train_tokenizer
    from zeda_rl.models.tiny import tiny_qwen3_moe_config

    tok = train_tokenizer(
        [chat_example(e.prompt, e.response) for e in addition("train", 400)], vocab_size=300
    )
    torch.manual_seed(0)
    teacher = Qwen3MoeForCausalLM(
        tiny_qwen3_moe_config(vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    )
    if gate_std is not None:
        with torch.no_grad():
            for name, p in teacher.named_parameters():
                if name.endswith("mlp.gate.weight"):
                    p.normal_(0, gate_std)
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    convert(root / "teacher", root / "student", log=lambda *_: None)
    return teacher.eval(), tok


@pytest.fixture(scope="session")
def static_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """family -> folder of a saved tiny static teacher (seed 0)."""
    root = tmp_path_factory.mktemp("static")
    out = {}
    for family in FAMILIES:
        path = root / family
        build_static_model(family, seed=0).save_pretrained(path)
        (path / "tokenizer_config.json").write_text('{"model_max_length": 512}\n')
        out[family] = path
    return out


@pytest.fixture(scope="session")
def launch_cache(tmp_path_factory) -> Path:
    """ZEDA_CACHE_DIR of the tests' launches: the smoke teachers the first launch of each
    family trains, reused by the rest of the session."""
    return tmp_path_factory.mktemp("launch_cache")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped cleanly without it (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
