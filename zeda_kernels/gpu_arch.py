"""What the ahead-of-time compile check and the roofline model know about the GPUs the
fused MoE targets: per-SM resource limits by compute capability, and the devices' peaks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuArch:
    """Per-SM limits that decide whether a kernel fits and how many blocks share an SM."""

    name: str
    capability: int
    smem_per_block: int  # bytes a block may opt in to
    smem_per_sm: int
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    smem_reserved_per_block: int = 1024  # the driver's share of each block's shared memory


ARCHS: dict[int, GpuArch] = {
    # CUDA C programming guide, compute capability tables: 227 KB per block, 228 KB per SM.
    90: GpuArch("H100/H200 (sm_90)", 90, smem_per_block=232448, smem_per_sm=233472),
    # 163 KB per block, 164 KB per SM.
    80: GpuArch("A100 (sm_80)", 80, smem_per_block=166912, smem_per_sm=167936),
}


@dataclass(frozen=True)
class GpuPeaks:
    """Datasheet peaks of one device: dense 16-bit tensor-core FLOP/s and HBM bandwidth."""

    name: str
    capability: int
    bf16_flops: float
    hbm_bytes_per_s: float


DEVICES: dict[str, GpuPeaks] = {
    "H100": GpuPeaks("H100 SXM", 90, bf16_flops=989e12, hbm_bytes_per_s=3.35e12),
    "H200": GpuPeaks("H200 SXM", 90, bf16_flops=989e12, hbm_bytes_per_s=4.8e12),
    "A100": GpuPeaks("A100 SXM 80GB", 80, bf16_flops=312e12, hbm_bytes_per_s=2.04e12),
}
