"""Compile the fused MoE ahead of time for named GPUs, on a machine without one.

    python -m zeda_kernels.aot [--arch 90,80] [--dtype bf16,fp16,fp32]
                               [--shapes qwen3,glm] [--tokens 64,4096] [--all-configs]
                               [--jobs N] [--json OUT]

What gets compiled is what a GPU run would launch: the host code of
``fused_experts_forward`` (deterministic and atomic) and ``fused_experts_backward`` runs on
``meta`` tensors with every Triton launch recorded instead of executed, so each kernel
comes with the very arguments, integer specialisations (``tt.divisibility``, ``== 1``),
constexprs and options of the real call; an autotuned launch contributes every config its
autotuner may pick (after ``prune_tile_configs``; ``--all-configs``: the whole space).
Each unit goes through Triton's whole pipeline down to a cubin for ``sm_XX`` with the
ptxas in the triton wheel; ptxas's own report gives registers and spills, the kernel's
metadata its shared memory, and an occupancy follows from the architecture's limits.

A unit fails on a compile error, on shared memory above the architecture's per-block
limit, or on a register spill in a forward kernel at a config the autotuner may pick
(backward kernels run at fixed tiles; their spills are reported, not failed). Exit code 1
if any unit fails.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from zeda_kernels.gpu_arch import ARCHS, GpuArch
from zeda_kernels.model_shapes import MOE_SHAPES, MoeShape
from zeda_kernels.moe_dispatch import ExpertsCall

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Forward kernels must not spill at any config the autotuner may pick (issue 16).
FORWARD_KERNELS = ("count", "scatter", "gate_up", "down", "down_atomic", "combine")


@dataclass
class Unit:
    """One kernel as one launch site compiles it, at one tile config."""

    kernel: str
    fn_name: str
    signature: dict[str, str]
    constexprs: dict[str, Any]
    attrs: dict[tuple[int, ...], list]
    num_warps: int
    num_stages: int
    autotuned: bool
    dtype: str = ""
    arch: int = 90

    def key(self) -> tuple:
        return (
            self.fn_name,
            tuple(sorted(self.signature.items())),
            tuple(sorted((k, str(v)) for k, v in self.constexprs.items())),
            tuple(sorted((k, str(v)) for k, v in self.attrs.items())),
            self.num_warps,
            self.num_stages,
            self.arch,
        )

    def tiles(self) -> str:
        c = self.constexprs
        dims = [f"{n[6:]}{c[n]}" for n in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK") if n in c]
        return " ".join(dims) + f" w{self.num_warps} s{self.num_stages}"


@dataclass
class UnitReport:
    kernel: str
    arch: int
    dtype: str
    tiles: str
    autotuned: bool
    registers: int = 0
    spill_store_bytes: int = 0
    spill_load_bytes: int = 0
    shared_bytes: int = 0
    occupancy: float = 0.0  # resident warps / the SM's maximum
    compile_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- recording the launches of the real host code ---------------------------------------


def _arg_spec(value: Any) -> tuple[str, str | None, Any]:
    """(signature type, specialisation, constexpr value or None) of one launch argument,
    as Triton's JIT would specialise it on a GPU (CUDA allocations are 16-byte aligned)."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import MockTensor, native_specialize_impl

    if isinstance(value, torch.Tensor):
        value = MockTensor(value.dtype)
    kind, spec = native_specialize_impl(BaseBackend, value, False, True, True)
    return kind, spec, (spec if kind == "constexpr" else None)


def _unit_from_call(kernel: str, jit_fn, args: tuple, kwargs: dict, autotuned: bool) -> Unit:
    from triton.backends.compiler import BaseBackend

    names = jit_fn.arg_names
    bound = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
    options = {k: v for k, v in kwargs.items() if k not in names}
    const_names = {p.name for p in jit_fn.params if p.is_constexpr}
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    attrs: dict[tuple[int, ...], list] = {}
    for index, name in enumerate(names):
        if name not in bound:
            continue  # a tile size the autotuner fills in
        if name in const_names:
            signature[name], constexprs[name] = "constexpr", bound[name]
            continue
        kind, spec, const = _arg_spec(bound[name])
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = const
        elif spec:
            attrs[(index,)] = BaseBackend.parse_attr(spec)
    return Unit(
        kernel=kernel,
        fn_name=jit_fn.__name__,
        signature=signature,
        constexprs=constexprs,
        attrs=attrs,
        num_warps=options.get("num_warps", 4),
        num_stages=options.get("num_stages", 3),
        autotuned=autotuned,
    )


def _kernel_label(fn_name: str, constexprs: dict[str, Any]) -> str:
    if fn_name == "_rows_times_expert_kernel":
        if not constexprs.get("SCALE"):
            return "bwd_dx"
        return "down_atomic" if constexprs.get("ATOMIC") else "down"
    if fn_name == "_bwd_expert_weight_kernel":
        return "bwd_dW_down" if constexprs.get("LEFT_BY_TOKEN") else "bwd_dW_gate_up"
    return fn_name.strip("_").removesuffix("_kernel")


@contextlib.contextmanager
def _recorded_launches() -> Iterator[list[tuple[Any, tuple, dict, list | None]]]:
    """Triton launches inside the block are recorded, not run: (jit fn, args, kwargs,
    the autotuner's candidate configs or None)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    calls: list[tuple[Any, tuple, dict, list | None]] = []

    def jit_run(self, *args, grid, warmup, **kwargs):
        calls.append((self, args, kwargs, None))

    def tuned_run(self, *args, grid=None, warmup=False, **kwargs):
        self.nargs = dict(zip(self.arg_names, args, strict=False))
        configs = self.prune_configs(kwargs)
        self.nargs = None
        calls.append((self.fn, args, kwargs, configs))

    saved = JITFunction.run, Autotuner.run
    JITFunction.run, Autotuner.run = jit_run, tuned_run
    try:
        yield calls
    finally:
        JITFunction.run, Autotuner.run = saved


def launch_units(
    shape: MoeShape, tokens: int, dtype: torch.dtype, all_configs: bool = False
) -> list[Unit]:
    """Every kernel launch of one forward (deterministic and atomic) and one backward of
    the fused MoE at ``shape`` x ``tokens``, one unit per tile config it may run."""
    from zeda_kernels import triton_moe

    meta = dict(device="meta", dtype=dtype)
    hidden = torch.empty(tokens, shape.hidden, **meta)
    ids = torch.empty(tokens, shape.top_k, device="meta", dtype=torch.int64)
    weights = torch.empty(tokens, shape.top_k, **meta)
    gate_up = torch.empty(shape.real_experts, 2 * shape.inter, shape.hidden, **meta)
    down = torch.empty(shape.real_experts, shape.hidden, shape.inter, **meta)
    call = ExpertsCall(hidden, ids, weights, gate_up, down, shape.real_experts)
    with _recorded_launches() as calls:
        for deterministic in (True, False):
            triton_moe.fused_experts_forward(call, deterministic=deterministic)
        triton_moe.fused_experts_backward(hidden, call)
    units = []
    for jit_fn, args, kwargs, configs in calls:
        if configs is None:
            candidates = [None]
        else:
            candidates = triton_moe.TILE_CONFIGS if all_configs else configs
        for config in candidates:
            merged = kwargs if config is None else kwargs | config.all_kwargs()
            unit = _unit_from_call("", jit_fn, args, merged, autotuned=config is not None)
            unit.kernel = _kernel_label(unit.fn_name, unit.constexprs)
            units.append(unit)
    return units


# --- compiling and reading the resource report ------------------------------------------

_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def occupancy(arch: GpuArch, registers: int, shared_bytes: int, num_warps: int) -> float:
    """Resident warps per SM over the maximum, from registers (allocated per warp in units
    of 256), shared memory and the warp / block limits."""
    regs_per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    by_regs = arch.regs_per_sm // (regs_per_warp * num_warps)
    by_smem = arch.smem_per_sm // (shared_bytes + arch.smem_reserved_per_block)
    by_warps = arch.max_warps_per_sm // num_warps
    blocks = min(by_regs, by_smem, by_warps, arch.max_blocks_per_sm)
    return blocks * num_warps / arch.max_warps_per_sm


def compile_unit(unit: Unit) -> UnitReport:
    """Compile ``unit`` for its architecture (no GPU needed) and check its resources."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from zeda_kernels import triton_moe

    arch = ARCHS[unit.arch]
    report = UnitReport(unit.kernel, unit.arch, unit.dtype, unit.tiles(), unit.autotuned)
    fn = getattr(triton_moe, unit.fn_name)
    source = ASTSource(
        fn=fn, signature=unit.signature, constexprs=unit.constexprs, attrs=unit.attrs
    )
    log = io.StringIO()
    start = time.perf_counter()
    try:
        # ptxas's verbose report is printed only when asked for (and only on a cache miss:
        # the caller gives each run a private cache).
        with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            compiled = triton.compile(
                source,
                target=GPUTarget("cuda", unit.arch, 32),
                options={"num_warps": unit.num_warps, "num_stages": unit.num_stages},
            )
    except Exception as error:  # noqa: BLE001 (any compiler failure is this unit's result)
        report.problems.append(f"compile error: {type(error).__name__}: {str(error)[:200]}")
        return report
    report.compile_s = time.perf_counter() - start
    text = log.getvalue()
    regs, spills = _PTXAS_REGS.search(text), _PTXAS_SPILLS.search(text)
    if regs is None:
        report.problems.append("no ptxas report (compiled from a cache?)")
        return report
    report.registers = int(regs.group(1))
    if spills:
        report.spill_store_bytes, report.spill_load_bytes = map(int, spills.groups())
    report.shared_bytes = int(compiled.metadata.shared)
    report.occupancy = occupancy(arch, report.registers, report.shared_bytes, unit.num_warps)
    if report.shared_bytes > arch.smem_per_block:
        report.problems.append(
            f"shared memory {report.shared_bytes} B > {arch.name}'s {arch.smem_per_block} B"
        )
    if report.spill_store_bytes and unit.kernel in FORWARD_KERNELS:
        report.problems.append(f"spills {report.spill_store_bytes} B in a forward kernel")
    return report


def _compile_in_private_cache(unit: Unit) -> UnitReport:
    from triton import knobs

    with tempfile.TemporaryDirectory(prefix="zeda_aot_") as cache, knobs.cache.scope():
        knobs.cache.dir = cache
        return compile_unit(unit)


def collect_units(
    archs: list[int],
    dtypes: list[str],
    shapes: list[str],
    tokens: list[int],
    all_configs: bool = False,
) -> list[Unit]:
    """Distinct compile units over the requested grid (shapes that specialise alike, e.g.
    both models' (2048, 768) and (2048, 1536), share their units)."""
    from zeda_kernels.triton_moe import tile_target

    units: dict[tuple, Unit] = {}
    for arch in archs:
        with tile_target(arch):  # the autotuner prunes for this architecture
            for dtype in dtypes:
                for shape_name in shapes:
                    for count in tokens:
                        shape = MOE_SHAPES[shape_name]
                        for unit in launch_units(shape, count, DTYPES[dtype], all_configs):
                            unit.dtype, unit.arch = dtype, arch
                            units.setdefault(unit.key(), unit)
    return list(units.values())


def compile_all(units: list[Unit], jobs: int) -> list[UnitReport]:
    if jobs <= 1:
        return [_compile_in_private_cache(u) for u in units]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_compile_in_private_cache, units, chunksize=4))


def format_table(reports: list[UnitReport]) -> str:
    header = (
        "| kernel | arch | dtype | tiles (M N K, warps, stages) | tuned | regs | spill B "
        "| smem B | occupancy | compile s | status |"
    )
    lines = [header, "|---|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in sorted(reports, key=lambda r: (r.arch, r.dtype, r.kernel, r.tiles)):
        status = "ok" if r.ok else "; ".join(r.problems)
        lines.append(
            f"| {r.kernel} | sm_{r.arch} | {r.dtype} | {r.tiles} | {'yes' if r.autotuned else ''}"
            f" | {r.registers} | {r.spill_store_bytes} | {r.shared_bytes} | {r.occupancy:.0%}"
            f" | {r.compile_s:.2f} | {status} |"
        )
    return "\n".join(lines)


def format_summary(reports: list[UnitReport]) -> str:
    """One line per (architecture, dtype, kernel): the range over its compiled configs."""
    groups: dict[tuple[int, str, str], list[UnitReport]] = {}
    for r in reports:
        groups.setdefault((r.arch, r.dtype, r.kernel), []).append(r)
    lines = [
        "| arch | dtype | kernel | configs | registers | max spill B | max smem B "
        "| occupancy | failed |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (arch, dtype, kernel), group in sorted(groups.items()):
        regs = sorted(r.registers for r in group)
        occ = sorted(r.occupancy for r in group)
        lines.append(
            f"| sm_{arch} | {dtype} | {kernel} | {len(group)} | {regs[0]}-{regs[-1]} "
            f"| {max(r.spill_store_bytes for r in group)} | {max(r.shared_bytes for r in group)} "
            f"| {occ[0]:.0%}-{occ[-1]:.0%} | {sum(not r.ok for r in group)} |"
        )
    return "\n".join(lines)


def _parsed_list(parser: argparse.ArgumentParser, flag: str, text: str, allowed=None) -> list:
    """A comma-separated option: names from ``allowed``, or positive integers."""
    parts = [part for part in text.split(",") if part]
    if allowed is None:
        if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
            parser.error(f"{flag}: positive integers expected, got {text!r}")
        return [int(p) for p in parts]
    unknown = [p for p in parts if p not in allowed]
    if unknown or not parts:
        parser.error(f"{flag}: unknown {unknown or text!r}; choose from {sorted(allowed)}")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zeda_kernels.aot", description=__doc__)
    parser.add_argument("--arch", default="90,80", help="compute capabilities, e.g. 90,80")
    parser.add_argument("--dtype", default="bf16,fp16,fp32")
    parser.add_argument("--shapes", default="qwen3,glm", help=f"of {sorted(MOE_SHAPES)}")
    parser.add_argument(
        "--tokens", default="64,4096", help="token counts (decode- and prefill-sized tiles)"
    )
    parser.add_argument(
        "--all-configs", action="store_true", help="the whole tile space, not just the kept"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write every unit's report here")
    args = parser.parse_args(argv)
    archs = [int(a) for a in _parsed_list(parser, "--arch", args.arch, {str(a) for a in ARCHS})]
    dtypes = _parsed_list(parser, "--dtype", args.dtype, DTYPES)
    shapes = _parsed_list(parser, "--shapes", args.shapes, MOE_SHAPES)
    tokens = _parsed_list(parser, "--tokens", args.tokens)
    if args.jobs < 1:
        parser.error(f"--jobs: at least 1, got {args.jobs}")

    # Triton 3.9 warns on every compile until this is set; 1 is its current default (fused
    # multiply-adds on), which is what a GPU run compiles with.
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    start = time.perf_counter()
    units = collect_units(archs, dtypes, shapes, tokens, args.all_configs)
    reports = compile_all(units, args.jobs)
    print(format_table(reports))
    print()
    print(format_summary(reports))
    failed = [r for r in reports if not r.ok]
    print(
        f"\n{len(reports)} units compiled for {', '.join(ARCHS[a].name for a in archs)} in "
        f"{time.perf_counter() - start:.0f} s: {len(reports) - len(failed)} ok, "
        f"{len(failed)} failed"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(r) | {"ok": r.ok} for r in reports], out, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
