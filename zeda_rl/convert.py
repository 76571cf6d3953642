"""Convert a static MoE checkpoint (Qwen3-MoE, GLM-4.7-Flash) into a ZEDA checkpoint.

    python -m zeda_rl.convert --src HF_DIR --dst OUT_DIR [--num-zero-experts N] [--seed S]

Every original tensor keeps its name and bytes. Each router weight ``...mlp.gate.weight``
grows from N to N + N_Z rows; the new rows are ``randn * std + mean`` with mean and std per
hidden dimension over the N original rows. GLM's ``e_score_correction_bias`` grows the same
way with a scalar mean and std. Config and tokenizer files are carried over; the config
becomes a ZEDA config that ``AutoModelForCausalLM`` loads once ``zeda_rl`` is imported.

All input is validated (config, every shard header, the index, the router shapes) before
anything is written; output is built in a temporary sibling folder and renamed into place
only when complete, so a failure leaves no partial output behind. Shards are streamed: an
untouched tensor is copied as a byte range, so memory stays at about one tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zeda_rl.families import FAMILIES, get_family, is_zeda_config
from zeda_rl.safetensors_io import (
    CorruptShardError,
    ShardHeader,
    StreamingShardWriter,
    read_header,
    read_tensor,
    tensor_bytes,
)

INDEX_FILE = "model.safetensors.index.json"
ROUTER_WEIGHT_SUFFIX = "mlp.gate.weight"
ROUTER_BIAS_SUFFIX = "mlp.gate.e_score_correction_bias"

# Where MoE configs of any architecture keep their expert count (to tell "not an MoE" from
# "an MoE we do not support").
_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


class ConversionError(ValueError):
    """Bad conversion input; raised before anything is written."""


@dataclass
class ConversionPlan:
    src: Path
    dst: Path
    config: dict[str, Any]
    family: str
    num_real: int
    num_zero: int
    zero_expert_type: str
    shards: list[ShardHeader]
    index: dict[str, Any] | None
    router_keys: set[str]


def _num_routed_experts(config: dict[str, Any]) -> int:
    for key in _EXPERT_COUNT_KEYS:
        if config.get(key):
            return int(config[key])
    return 0


_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def _check_router_entry(shard: str, name: str, entry, config: dict[str, Any], num_real: int):
    """A router tensor as the config describes it: N rows (of hidden_size for the weight),
    floating point (its new rows are drawn from the old ones' statistics)."""
    where = f"{shard}: router tensor {name}"
    if entry.shape[0] != num_real:
        raise ConversionError(f"{where} has {entry.shape[0]} rows, config says {num_real} experts")
    if entry.dtype not in _FLOAT_DTYPES:
        raise ConversionError(f"{where} is {entry.dtype}, not floating point")
    if name.endswith(ROUTER_WEIGHT_SUFFIX):
        hidden = int(config.get("hidden_size", 0))
        if len(entry.shape) != 2 or entry.shape[1] != hidden:
            raise ConversionError(
                f"{where} has shape {list(entry.shape)}, config says [{num_real}, {hidden}] "
                "(hidden_size)"
            )
    elif len(entry.shape) != 1:
        raise ConversionError(f"{where} has shape {list(entry.shape)}, expected [{num_real}]")


def _expected_moe_layers(config: dict[str, Any], family: str) -> int:
    layers = int(config["num_hidden_layers"])
    first_dense = get_family(family).first_dense_key
    if first_dense is not None:
        types = config.get("mlp_layer_types")
        if types:
            return sum(t == "sparse" for t in types)
        return layers - int(config.get(first_dense, 1))
    step = int(config.get("decoder_sparse_step", 1))
    only = set(config.get("mlp_only_layers") or [])
    return sum(1 for i in range(layers) if i not in only and (i + 1) % step == 0)


def _read_config(src: Path) -> dict[str, Any]:
    path = src / "config.json"
    if not path.is_file():
        raise ConversionError(f"--src {src}: no config.json (is this a Hugging Face model folder?)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ConversionError(f"{path} is not a JSON object")
    return config


def _shard_files(src: Path) -> tuple[list[str], dict[str, Any] | None]:
    index_path = src / INDEX_FILE
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            weight_map: dict[str, str] = index["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConversionError(f"{index_path} is not a valid safetensors index: {err}") from err
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (src / f).is_file()]
        if missing:
            raise ConversionError(f"{index_path} names shards that do not exist: {missing}")
        return files, index
    files = sorted(p.name for p in src.glob("*.safetensors"))
    if not files:
        bins = sorted(p.name for p in src.glob("*.bin"))
        hint = " (found PyTorch .bin files: re-save the model with safetensors)" if bins else ""
        raise ConversionError(f"--src {src}: no *.safetensors weights{hint}")
    if len(files) > 1:
        raise ConversionError(f"--src {src}: {len(files)} safetensors files but no {INDEX_FILE}")
    return files, None


def plan_conversion(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    num_zero_experts: int | None = None,
    zero_expert_type: str = "zero",
) -> ConversionPlan:
    """Validate everything about a conversion without writing anything."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConversionError(f"--src {src}: not a directory")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConversionError(
            f"--dst {dst} already exists and is not empty; refusing to overwrite it"
        )
    if dst.resolve() == src.resolve():
        raise ConversionError("--dst must differ from --src")

    config = _read_config(src)
    model_type = config.get("model_type")
    if is_zeda_config(config):
        raise ConversionError(f"--src {src} is already a ZEDA checkpoint (model_type {model_type})")
    num_real = _num_routed_experts(config)
    if num_real <= 0:
        raise ConversionError(
            f"--src {src}: model_type {model_type!r} is not a Mixture-of-Experts model "
            f"(config has none of {list(_EXPERT_COUNT_KEYS)})"
        )
    if model_type not in FAMILIES:
        raise ConversionError(
            f"--src {src}: unsupported MoE architecture {model_type!r} "
            f"(supported: {sorted(FAMILIES)})"
        )
    num_zero = num_real // 2 if num_zero_experts is None else int(num_zero_experts)
    if num_zero < 1:
        raise ConversionError(f"--num-zero-experts must be >= 1, got {num_zero}")
    if zero_expert_type not in ("zero", "copy"):
        raise ConversionError(f"--zero-expert-type {zero_expert_type!r}: choose 'zero' or 'copy'")

    files, index = _shard_files(src)
    shards = []
    for name in files:
        try:
            shards.append(read_header(src / name))
        except CorruptShardError as err:
            raise ConversionError(f"corrupt shard: {err}") from err
    if index is not None:
        for tensor_name, file in index["weight_map"].items():
            header = next(s for s in shards if Path(s.path).name == file)
            if tensor_name not in header.tensors:
                raise ConversionError(f"{INDEX_FILE} maps {tensor_name} to {file}, which lacks it")

    router_keys: set[str] = set()
    for shard in shards:
        for name, entry in shard.tensors.items():
            if name.endswith(ROUTER_WEIGHT_SUFFIX) or name.endswith(ROUTER_BIAS_SUFFIX):
                _check_router_entry(Path(shard.path).name, name, entry, config, num_real)
                router_keys.add(name)
    expected = _expected_moe_layers(config, model_type)
    found = sum(1 for k in router_keys if k.endswith(ROUTER_WEIGHT_SUFFIX))
    if found < expected:
        raise ConversionError(
            f"--src {src}: found {found} router weights (*.{ROUTER_WEIGHT_SUFFIX}), "
            f"config implies {expected} MoE layers (missing shard or tensors?)"
        )
    return ConversionPlan(
        src,
        dst,
        config,
        model_type,
        num_real,
        num_zero,
        zero_expert_type,
        shards,
        index,
        router_keys,
    )


def _generator(seed: int, tensor_name: str) -> torch.Generator:
    # Seed per tensor name: the result does not depend on how the checkpoint is sharded.
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(tensor_name.encode()))


def grow_router_weight(
    weight: torch.Tensor, num_zero: int, generator: torch.Generator
) -> torch.Tensor:
    """Append ``num_zero`` rows drawn as randn * std + mean (per hidden dimension)."""
    rows = weight.float()
    mean = rows.mean(dim=0)
    std = rows.std(dim=0) if rows.shape[0] > 1 else torch.zeros_like(mean)
    new = torch.randn(num_zero, rows.shape[1], generator=generator) * std + mean
    return torch.cat([weight, new.to(weight.dtype)], dim=0)


def grow_correction_bias(
    bias: torch.Tensor, num_zero: int, generator: torch.Generator
) -> torch.Tensor:
    """Append ``num_zero`` entries drawn with the scalar mean and std of the original bias."""
    values = bias.float()
    std = values.std() if values.numel() > 1 else torch.zeros(())
    new = torch.randn(num_zero, generator=generator) * std + values.mean()
    return torch.cat([bias, new.to(bias.dtype)])


def _zeda_config(plan: ConversionPlan, seed: int) -> dict[str, Any]:
    config = dict(plan.config)
    family = get_family(plan.family)
    config.update(
        model_type=family.zeda_model_type,
        architectures=[family.zeda_architecture],
        num_zero_experts=plan.num_zero,
        zero_expert_type=plan.zero_expert_type,
        mask_zero_experts=False,
        zeda_conversion={
            "source_model_type": plan.family,
            "seed": seed,
            "num_real_experts": plan.num_real,
        },
    )
    return config


def _convert_shard(plan: ConversionPlan, shard: ShardHeader, out_path: Path, seed: int) -> int:
    entries = sorted(shard.tensors.values(), key=lambda e: e.begin)
    layout = []
    for entry in entries:
        shape = entry.shape
        if entry.name in plan.router_keys:
            shape = (plan.num_real + plan.num_zero, *shape[1:])
        layout.append((entry.name, entry.dtype, shape))
    writer = StreamingShardWriter(str(out_path), layout, shard.metadata)
    written = 0
    try:
        for entry in entries:
            if entry.name in plan.router_keys:
                original = read_tensor(shard, entry.name)
                grow = grow_router_weight if original.dim() == 2 else grow_correction_bias
                grown_tensor = grow(original, plan.num_zero, _generator(seed, entry.name))
                data = tensor_bytes(grown_tensor)
                writer.write_bytes(entry.name, data)
                written += len(data)
                del original, grown_tensor, data
            else:
                writer.copy_from(entry.name, shard)
                written += entry.nbytes
    finally:
        writer.close()
    return written


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    num_zero_experts: int | None = None,
    seed: int = 0,
    zero_expert_type: str = "zero",
    log=print,
) -> Path:
    """Convert ``src`` into a ZEDA checkpoint at ``dst``; returns ``dst``."""
    plan = plan_conversion(src, dst, num_zero_experts, zero_expert_type)
    log(
        f"converting {plan.src} ({plan.family}, {plan.num_real} experts) -> {plan.dst} "
        f"(+{plan.num_zero} {plan.zero_expert_type} experts, {len(plan.router_keys)} router tensors, "
        f"{len(plan.shards)} shard(s))"
    )
    tmp = plan.dst.parent / f".{plan.dst.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        total = 0
        for shard in plan.shards:
            total += _convert_shard(plan, shard, tmp / Path(shard.path).name, seed)
            log(f"  wrote {Path(shard.path).name}")
        for item in plan.src.iterdir():
            if item.suffix == ".safetensors" or item.name in (INDEX_FILE, "config.json"):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        if plan.index is not None:
            index = dict(plan.index)
            index["metadata"] = {**(index.get("metadata") or {}), "total_size": total}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(_zeda_config(plan, seed), indent=2) + "\n")
        if plan.dst.exists():
            plan.dst.rmdir()  # empty (checked in the plan)
        os.replace(tmp, plan.dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"done: {plan.dst}")
    return plan.dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zeda_rl.convert", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--src", required=True, help="Hugging Face folder of the static MoE model")
    parser.add_argument("--dst", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--num-zero-experts", type=int, default=None, help="N_Z (default N/2)")
    parser.add_argument("--zero-expert-type", default="zero", choices=["zero", "copy"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the new router rows")
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.dst, args.num_zero_experts, args.seed, args.zero_expert_type)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
