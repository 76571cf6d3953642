"""The fused MoE compiled ahead of time for H100/H200 (sm_90) and A100 (sm_80) without a GPU
(zeda_kernels.aot), and the autotune pruning that keeps its configs within those GPUs'
limits."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch

triton = pytest.importorskip("triton")
from zeda_kernels import aot, triton_moe  # noqa: E402
from zeda_kernels.model_shapes import MOE_SHAPES  # noqa: E402

TUNED = ("gate_up", "down", "down_atomic")
ARCHS = (90, 80)
DTYPES = ("bf16", "fp16", "fp32")


def _kept(arch: int, dtype: str, tokens: int, shape: str = "qwen3") -> dict[str, list]:
    with triton_moe.tile_target(arch):
        units = aot.launch_units(MOE_SHAPES[shape], tokens, aot.DTYPES[dtype])
    kept = defaultdict(list)
    for unit in units:
        if unit.autotuned:
            kept[unit.kernel].append(unit)
    return kept


def _tiles(units) -> set[tuple[int, int, int, int]]:
    """(BLOCK_N, BLOCK_K, warps, stages) of the units."""
    return {(u.constexprs["BLOCK_N"], u.constexprs["BLOCK_K"], u.num_warps, u.num_stages)
            for u in units}  # fmt: skip


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pruning_keeps_a_config_for_every_tuned_launch(arch, dtype):
    for shape in MOE_SHAPES:
        for tokens in (64, 4096):  # decode- and prefill-sized tiles
            kept = _kept(arch, dtype, tokens, shape)
            assert set(kept) == set(TUNED), (shape, tokens, sorted(kept))
            block_m = triton_moe.default_blocks(
                tokens * MOE_SHAPES[shape].top_k, aot.DTYPES[dtype]
            )[0]
            for kernel, units in kept.items():
                assert {u.constexprs["BLOCK_M"] for u in units} == {block_m}
                assert 1 <= len(_tiles(units)) <= len(triton_moe.TILE_CONFIGS), kernel


def test_pruning_drops_what_cannot_fit():
    # gate/up at M64 N128 K128 with 3 stages: 3 x (64x128 + 2x128x128) x 2 B = 240 KiB of
    # shared memory, over sm_90's 227 KiB per block; 2 stages (160 KiB) fit.
    hopper = _kept(90, "bf16", 4096)
    assert (128, 128, 4, 3) not in _tiles(hopper["gate_up"])
    assert (128, 128, 4, 2) in _tiles(hopper["gate_up"])
    # The small-row launches keep every config.
    assert len(_tiles(_kept(90, "bf16", 64)["gate_up"])) == len(triton_moe.TILE_CONFIGS)
    # On an A100, M64 N128 with 4 warps spills (mma.sync keeps its operand fragments in
    # registers beside 128 accumulators per thread): dropped there, kept on sm_90.
    ampere = _kept(80, "bf16", 4096)
    assert (128, 64, 4, 2) not in _tiles(ampere["gate_up"])
    assert (128, 64, 4, 2) in _tiles(hopper["gate_up"])
    assert (128, 32, 4, 2) not in _tiles(ampere["down_atomic"])
    assert (128, 32, 4, 2) in _tiles(ampere["down"])
    # fp32 takes the FMA path: small row tiles, few configs, two stages.
    fp32 = _kept(80, "fp32", 4096)
    assert all(stages == 2 for *_, stages in _tiles(fp32["gate_up"]))
    assert {u.constexprs["BLOCK_M"] for u in fp32["gate_up"]} == {16}


def test_pruning_on_gpus_without_a_limits_table():
    """An RTX 4090 (sm_89) or a T4 (sm_75) prunes with the nearest older known limits."""
    weights = {"w_ptr": torch.empty(1, 1, 1, device="meta", dtype=torch.bfloat16)}

    def kept(capability):
        with triton_moe.tile_target(capability):
            return triton_moe.prune_tile_configs(
                triton_moe.TILE_CONFIGS, weights, weight_tiles=2, atomic=False, BLOCK_M=64
            )

    assert kept(89) == kept(80) == kept(75) and 0 < len(kept(80)) < len(kept(90))


def test_pruning_never_returns_nothing():
    tiny_budget = {"w_ptr": torch.empty(1, 1, 1, device="meta", dtype=torch.float32)}
    with triton_moe.tile_target(80):
        kept = triton_moe.prune_tile_configs(
            triton_moe.TILE_CONFIGS, tiny_budget, weight_tiles=64, atomic=True, BLOCK_M=1024
        )
    assert len(kept) == 1 and kept[0].kwargs == {"BLOCK_N": 64, "BLOCK_K": 32}


def test_occupancy_follows_the_tightest_limit():
    hopper = aot.ARCHS[90]
    # 128 registers x 4 warps: 16 KiB per block -> 4 blocks by registers; little shared memory.
    assert aot.occupancy(hopper, 128, 1024, 4) == pytest.approx(16 / 64)
    # 100 KiB of shared memory per block: 2 blocks of 8 warps.
    assert aot.occupancy(hopper, 32, 100 * 1024, 8) == pytest.approx(16 / 64)


@pytest.mark.slow
def test_aot_compiles_every_kept_config_for_h100_and_a100(tmp_path, capsys):
    """The CI check of issue 16: every kernel at every config the autotuner may pick, for
    both model shapes at decode- and prefill-sized tiles, compiles to a cubin for sm_90 and
    sm_80 with no spill in a forward kernel and shared memory within the limit."""
    out = tmp_path / "aot.json"
    code = aot.main(
        ["--arch", "90,80", "--dtype", "bf16,fp32", "--shapes", "qwen3,glm",
         "--tokens", "64,4096", "--jobs", "2", "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    reports = json.loads(out.read_text())
    failed = [r for r in reports if not r["ok"]]
    assert code == 0 and not failed, failed[:5]
    kernels = {(r["arch"], r["dtype"], r["kernel"]) for r in reports}
    every = {"combine", "bwd_rows", "bwd_dW_down", "bwd_dW_gate_up", "bwd_dx", *TUNED}
    for arch in ARCHS:
        # The grouping kernels take only the int32 ids: one unit serves every dtype.
        assert {"count", "scatter"} <= {k for a, _, k in kernels if a == arch}
        for dtype in ("bf16", "fp32"):
            for kernel in every:
                assert (arch, dtype, kernel) in kernels, (arch, dtype, kernel)
    for r in reports:
        assert r["registers"] > 0 and 0 < r["occupancy"] <= 1, r
        limit = aot.ARCHS[r["arch"]].smem_per_block
        assert r["shared_bytes"] <= limit
        if r["kernel"] in aot.FORWARD_KERNELS:
            assert r["spill_store_bytes"] == 0, r
    assert "| gate_up | sm_90 | bf16 |" in printed and "0 failed" in printed


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--arch", "75"], "--arch"),
        (["--dtype", "int8"], "--dtype"),
        (["--shapes", "llama"], "--shapes"),
        (["--tokens", "0"], "--tokens"),
        (["--jobs", "0"], "--jobs"),
    ],
)
def test_bad_arguments_are_refused_before_compiling(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        aot.main(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
