"""On a GPU machine (``pytest -m gpu``; skipped without CUDA): the pools on one device with
the GPU weight transfer methods (vLLM's nccl and ipc engines behind WeightSync), and the
megatron backend on CUDA against the torch backend."""

from __future__ import annotations

import pytest

from tests.conftest import build_static_model
from zeda_rl.config import RunConfig
from zeda_rl.convert import convert

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.mark.parametrize("method", ["nccl", "ipc"])
def test_gpu_weight_sync(tmp_path, method):
    import ray

    from zeda_rl.orchestrator import check_sync
    from zeda_rl.pools.placement import Pools
    from zeda_rl.trainer.batch import Sample

    build_static_model("qwen3_moe", 0).save_pretrained(tmp_path / "teacher")
    convert(tmp_path / "teacher", tmp_path / "student", log=lambda *_: None)
    cfg = RunConfig()
    cfg.rollout.max_model_len = cfg.teacher.max_model_len = 64
    cfg.rollout.kv_cache_gib = cfg.teacher.kv_cache_gib = 1
    cfg.trainer.num_workers = 1
    # Everything on one GPU: fractions of it, fixed KV budgets.
    cfg.rollout.gpus_per_worker = cfg.teacher.gpus = cfg.trainer.gpus_per_worker = 0.3
    cfg.resources.layout = "colocated"
    cfg.resources.timeout_s = 600
    cfg.weight_sync.method = method
    # The engine serves bf16, the trainer holds fp32: bf16 rounding bounds the agreement.
    cfg.weight_sync.check_tolerance = 0.1
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    pools = None
    try:
        pools = Pools(cfg, tmp_path / "teacher", tmp_path / "student", stop_ids=[])
        prompts = [[5, 6, 7, 8], [9, 10, 11]]
        cfg.stage2.max_new_tokens = 4
        probe = [Sample(g.prompt_ids, g.response_ids) for g in pools.generate_rollouts(prompts)]
        before = pools.get(pools.rollouts[0].score.remote([(p, [9, 9]) for p in prompts], 1.0))
        pools.train(probe, "sft", lr=0.05)
        assert pools.sync_weights()["tensors"] > 0
        after = pools.get(pools.rollouts[0].score.remote([(p, [9, 9]) for p in prompts], 1.0))
        assert (
            max(
                abs(a - b)
                for x, y in zip(before, after, strict=True)
                for a, b in zip(x, y, strict=True)
            )
            > 1e-2
        )
        assert check_sync(cfg, pools, probe) <= 0.1
    finally:
        if pools is not None:
            pools.shutdown()
        ray.shutdown()


def test_megatron_on_cuda_matches_torch(tmp_path):
    import torch

    from tests.test_megatron import _run

    build_static_model("qwen3_moe", 0).save_pretrained(tmp_path / "teacher")
    convert(tmp_path / "teacher", tmp_path / "zeda", log=lambda *_: None)
    assert torch.cuda.is_available()
    ref = _run("torch", tmp_path / "zeda", 1, tmp_path / "torch.pt")
    mine = _run("megatron", tmp_path / "zeda", 1, tmp_path / "megatron.pt")
    for a, b in zip(mine["metrics"], ref["metrics"], strict=True):
        for key, value in b.items():
            assert a[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key


@pytest.mark.parametrize("backend", ["triton", "te"])
def test_experts_backends_on_cuda_match_the_reference(backend):
    """The fused kernels and transformer-engine's path on CUDA, bf16 at a Qwen3-like shape
    (128 + 64 experts, top-8, ~50 % zero picks): output and gradients vs the torch reference
    in fp32."""
    import torch

    from tests.conftest import moe_case
    from zeda_kernels import backend_unavailable, grouped_experts_forward

    why = backend_unavailable(backend, cuda=True)
    if why is not None:
        pytest.skip(why)
    x, ids, w, gate_up, down = moe_case(
        tokens=300, hidden=256, inter=128, num_real=128, num_zero=64, top_k=8, zero_share=0.5
    )
    results = {}
    for name, dtype in (("torch", torch.float32), (backend, torch.bfloat16)):
        leaves = [
            t.to("cuda", dtype if t is not w else torch.float32).requires_grad_()
            for t in (x, w, gate_up, down)
        ]
        out = grouped_experts_forward(
            leaves[0], ids.cuda(), *leaves[1:], num_real_experts=128, backend=name
        )
        out.float().square().sum().backward()
        results[name] = [out.float(), *[t.grad.float() for t in leaves]]
    for mine, ref in zip(results[backend], results["torch"], strict=True):
        scale = float(ref.abs().max()) or 1.0
        assert float((mine - ref).abs().max()) <= 3e-2 * scale
