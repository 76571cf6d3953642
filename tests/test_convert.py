"""The converter: exact copies, grown routers, streaming, round trip, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from tests.conftest import FAMILIES, build_static_model, padded_batch
from zeda_rl.convert import ConversionError, convert, grow_router_weight, main
from zeda_rl.safetensors_io import read_header

QUIET = {"log": lambda *_: None}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in folder.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                out[name] = f.get_tensor(name)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_tensors_kept_bit_exact_and_routers_grown(tmp_path, static_checkpoints, family):
    src = static_checkpoints[family]
    dst = convert(src, tmp_path / "zeda", seed=3, **QUIET)
    before, after = _tensors(src), _tensors(dst)
    assert set(before) == set(after)
    num_real = 8
    grown = [
        k for k in before if k.endswith("mlp.gate.weight") or k.endswith("e_score_correction_bias")
    ]
    assert grown and all(k.endswith(("mlp.gate.weight", "e_score_correction_bias")) for k in grown)
    for name, tensor in before.items():
        if name in grown:
            assert after[name].shape[0] == num_real + 4
            assert torch.equal(after[name][:num_real], tensor)  # original rows bit-exact
            assert after[name].dtype == tensor.dtype
        else:
            assert torch.equal(after[name], tensor) and after[name].dtype == tensor.dtype
    config = json.loads((dst / "config.json").read_text())
    assert config["num_zero_experts"] == 4 and config["mask_zero_experts"] is False
    assert config["model_type"].startswith("zeda_")
    assert (dst / "tokenizer_config.json").read_text() == (
        src / "tokenizer_config.json"
    ).read_text()
    assert (dst / "generation_config.json").exists()
    # The same seed gives the same bytes; another seed other new rows.
    again = _tensors(convert(src, tmp_path / "again", seed=3, **QUIET))
    other = _tensors(convert(src, tmp_path / "other", seed=4, **QUIET))
    key = grown[0]
    assert torch.equal(again[key], after[key])
    assert not torch.equal(other[key][num_real:], after[key][num_real:])


def test_new_rows_follow_per_dimension_mean_and_std():
    g = torch.Generator().manual_seed(0)
    original = torch.randn(64, 16, generator=g) * torch.linspace(0.1, 2.0, 16) + torch.arange(16.0)
    grown = grow_router_weight(original, 20000, torch.Generator().manual_seed(1))
    new = grown[64:]
    torch.testing.assert_close(new.mean(0), original.mean(0), atol=0.05, rtol=0.02)
    torch.testing.assert_close(new.std(0), original.std(0), atol=0.02, rtol=0.03)


def test_num_zero_experts_option_and_cli(tmp_path, static_checkpoints):
    code = main(
        [
            "--src",
            str(static_checkpoints["qwen3_moe"]),
            "--dst",
            str(tmp_path / "z"),
            "--num-zero-experts",
            "6",
            "--seed",
            "1",
        ]
    )
    assert code == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "z")
    assert model.config.num_zero_experts == 6
    assert model.model.layers[0].mlp.gate.weight.shape[0] == 14


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_through_save_pretrained(tmp_path, static_checkpoints, family):
    dst = convert(static_checkpoints[family], tmp_path / "zeda", **QUIET)
    model = AutoModelForCausalLM.from_pretrained(dst).eval()
    model.save_pretrained(tmp_path / "resaved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "resaved").eval()
    assert type(reloaded) is type(model)
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        a = model(input_ids=input_ids, attention_mask=attention_mask)
        b = reloaded(input_ids=input_ids, attention_mask=attention_mask)
    assert torch.equal(a.logits, b.logits)
    # Saved in the hub's per-expert layout, identical tensors to the converter's output.
    resaved = _tensors(tmp_path / "resaved")
    for name, tensor in _tensors(dst).items():
        assert torch.equal(resaved[name], tensor), name


def _sharded_checkpoint(root: Path, family: str = "qwen3_moe") -> Path:
    model = build_static_model(family, 0, num_hidden_layers=4)
    path = root / "sharded"
    model.save_pretrained(path, max_shard_size="100KB")
    return path


def test_sharded_checkpoint_converts_and_loads(tmp_path):
    src = _sharded_checkpoint(tmp_path)
    shards = sorted(src.glob("*.safetensors"))
    assert len(shards) > 3
    dst = convert(src, tmp_path / "zeda", **QUIET)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    source_index = json.loads((src / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == source_index["weight_map"]
    assert index["metadata"]["total_size"] == sum(
        e.nbytes for f in dst.glob("*.safetensors") for e in read_header(f).tensors.values()
    )
    teacher = AutoModelForCausalLM.from_pretrained(src).eval()
    masked = AutoModelForCausalLM.from_pretrained(dst, mask_zero_experts=True).eval()
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        diff = (
            masked(input_ids=input_ids, attention_mask=attention_mask).logits
            - teacher(input_ids=input_ids, attention_mask=attention_mask).logits
        )
    assert diff.abs().max() <= 1e-5


def test_memory_stays_near_one_shard(tmp_path):
    """Convert 8 shards of ~48 MB; peak RSS growth must stay well under the checkpoint size."""
    src = tmp_path / "big"
    src.mkdir()
    num_layers, hidden, experts = 8, 512, 16
    config = {
        "model_type": "qwen3_moe",
        "architectures": ["Qwen3MoeForCausalLM"],
        "num_hidden_layers": num_layers,
        "hidden_size": hidden,
        "num_experts": experts,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 256,
        "vocab_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
    }
    (src / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    weight_map = {}
    for layer in range(num_layers):
        tensors = {f"model.layers.{layer}.mlp.gate.weight": torch.randn(experts, hidden)}
        for e in range(experts):
            tensors[f"model.layers.{layer}.mlp.experts.{e}.down_proj.weight"] = torch.randn(
                hidden, 1536
            )
        name = f"model-{layer:05d}-of-{num_layers:05d}.safetensors"
        save_file(tensors, src / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    shard_bytes = max(p.stat().st_size for p in src.glob("*.safetensors"))
    total_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))

    script = textwrap.dedent(
        f"""
        import resource, sys
        import zeda_rl.convert as c
        def rss_mb():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM"):
                        return int(line.split()[1]) / 1024
        base = rss_mb()
        c.convert({str(src)!r}, {str(tmp_path / "out")!r}, log=lambda *_: None)
        print(base, rss_mb())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    base, peak = map(float, result.stdout.split()[-2:])
    growth_mb = peak - base
    assert total_bytes / 2**20 > 350
    print(
        f"checkpoint {total_bytes / 2**20:.0f} MiB, shard {shard_bytes / 2**20:.0f} MiB, peak RSS growth {growth_mb:.0f} MiB"
    )
    assert growth_mb < 1.5 * shard_bytes / 2**20, (growth_mb, shard_bytes / 2**20)
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == num_layers


# ---------------------------------------------------------------------------------------
# Bad input: a clear error naming the problem, and nothing left behind.


def _assert_nothing_written(parent: Path, dst: Path) -> None:
    assert not dst.exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{dst.name}.partial")]


def test_rejects_dense_model(tmp_path):
    dense = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
        )
    )
    dense.save_pretrained(tmp_path / "dense")
    with pytest.raises(ConversionError, match="not a Mixture-of-Experts"):
        convert(tmp_path / "dense", tmp_path / "out", **QUIET)
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_rejects_unsupported_moe_architecture(tmp_path, static_checkpoints):
    src = tmp_path / "mixtral"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "mixtral", "num_local_experts": 8}))
    with pytest.raises(ConversionError, match="unsupported MoE architecture 'mixtral'"):
        convert(src, tmp_path / "out", **QUIET)
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_rejects_already_converted(tmp_path, static_checkpoints):
    dst = convert(static_checkpoints["qwen3_moe"], tmp_path / "z", **QUIET)
    with pytest.raises(ConversionError, match="already a ZEDA checkpoint"):
        convert(dst, tmp_path / "zz", **QUIET)


def test_rejects_missing_shard(tmp_path):
    src = _sharded_checkpoint(tmp_path)
    sorted(src.glob("*.safetensors"))[1].unlink()
    with pytest.raises(ConversionError, match="names shards that do not exist"):
        convert(src, tmp_path / "out", **QUIET)
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_rejects_missing_router_tensors(tmp_path, static_checkpoints):
    src = tmp_path / "norouter"
    src.mkdir()
    (src / "config.json").write_text((static_checkpoints["qwen3_moe"] / "config.json").read_text())
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(4, 4)}, src / "model.safetensors")
    with pytest.raises(ConversionError, match="found 0 router weights"):
        convert(src, tmp_path / "out", **QUIET)


@pytest.mark.parametrize("damage", ["truncate", "garbage_header"])
def test_rejects_corrupt_shard_before_writing(tmp_path, damage):
    src = _sharded_checkpoint(tmp_path)
    victim = sorted(src.glob("*.safetensors"))[-1]  # the last shard: earlier ones would convert
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) - 1000])
    else:
        victim.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(ConversionError, match=f"corrupt shard: .*{victim.name}"):
        convert(src, tmp_path / "out", **QUIET)
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_rejects_non_empty_destination_and_keeps_it(tmp_path, static_checkpoints):
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="already exists and is not empty"):
        convert(static_checkpoints["qwen3_moe"], dst, **QUIET)
    assert (dst / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(dst)) == ["precious.txt"]


def test_empty_destination_is_used(tmp_path, static_checkpoints):
    (tmp_path / "empty").mkdir()
    convert(static_checkpoints["qwen3_moe"], tmp_path / "empty", **QUIET)
    assert (tmp_path / "empty" / "config.json").exists()


def test_failure_midway_leaves_no_partial_output(tmp_path, static_checkpoints, monkeypatch):
    import zeda_rl.convert as conv

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(conv, "_zeda_config", explode)
    with pytest.raises(OSError, match="disk full"):
        convert(static_checkpoints["qwen3_moe"], tmp_path / "out", **QUIET)
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_cli_reports_errors_with_exit_code_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "zeda_rl.convert",
            "--src",
            str(tmp_path / "missing"),
            "--dst",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "error: --src" in result.stderr and "not a directory" in result.stderr


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("config_more_experts", "has 8 rows, config says 16 experts"),
        ("config_hidden_size", r"config says \[8, 128\] \(hidden_size\)"),
        ("router_int32", "is I32, not floating point"),
    ],
)
def test_rejects_a_checkpoint_that_disagrees_with_its_config(
    tmp_path, static_checkpoints, damage, message
):
    """A config.json that lies about the shapes, or a router of the wrong dtype: refused
    before anything is written."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(static_checkpoints["qwen3_moe"], src)
    config = json.loads((src / "config.json").read_text())
    if damage == "config_more_experts":
        config["num_experts"] = 16
    elif damage == "config_hidden_size":
        config["hidden_size"] = 128
    else:
        tensors = load_file(src / "model.safetensors")
        router = next(k for k in tensors if k.endswith("mlp.gate.weight"))
        tensors[router] = tensors[router].to(torch.int32)
        save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=message):
        convert(src, tmp_path / "out", **QUIET)
    _assert_nothing_written(tmp_path, tmp_path / "out")
