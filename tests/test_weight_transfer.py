"""The zeda_gloo weight transfer backend's wire format: both ends cut the same buckets from
the metadata, every tensor is aligned in its bucket, and a source that disagrees with its
metadata is refused instead of loading garbage."""

from __future__ import annotations

import pytest
import torch


def test_bucket_plan_is_aligned_and_bounded():
    from vllm.distributed.weight_transfer.base import ParamMeta

    from zeda_rl.vllm_plugin.weight_transfer import bucket_plan

    metas = [
        ParamMeta("a", torch.float32, (3, 5)),  # 60 bytes
        ParamMeta("b", torch.bfloat16, (7,)),  # 14
        ParamMeta("c", torch.float32, (100,)),  # 400: alone, over the limit
        ParamMeta("d", torch.int64, (2,)),  # 16
        ParamMeta("e", torch.float32, (1,)),  # 4
    ]
    plan = bucket_plan(metas, bucket_bytes=128)
    assert [[s.index for s in slots] for _, slots in plan] == [[0, 1], [2], [3, 4]]
    for size, slots in plan:
        assert all(s.offset % 16 == 0 for s in slots)
        assert size == slots[-1].offset + slots[-1].nbytes
        assert len(slots) == 1 or size <= 128
    assert plan[0][1][1].offset == 64 and plan[2][1][1].offset == 16


def test_gloo_transfer_round_trip_and_mismatch():
    """The trainer end broadcasts packed buckets that the worker end unpacks bit-exactly
    into the names, dtypes and shapes of the metadata (two ranks, threads, real gloo)."""
    from dataclasses import asdict

    from zeda_rl.vllm_plugin import weight_transfer as wt

    state = {
        "w": torch.randn(4, 6),
        "b": torch.randn(3).to(torch.bfloat16),
        "idx": torch.arange(5),
        "big": torch.randn(40, 10),
    }
    received: dict[str, torch.Tensor] = {}

    class Worker:
        def __init__(self):
            self.engine = None

        def init_weight_transfer_engine(self, init_info):
            engine = object.__new__(wt.GlooWeightTransferEngine)
            engine.model = type("M", (), {"load_weights": lambda _, w: received.update(w)})()
            engine.bucket_bytes = init_info["bucket_bytes"]
            engine.group = wt.open_group(
                init_info["master_address"],
                init_info["master_port"],
                init_info["rank_offset"],
                init_info["world_size"],
                init_info["timeout_s"],
            )
            self.engine = engine

        def start_weight_update(self):
            pass

        def update_weights(self, update_info):
            self.engine.receive_weights(wt.GlooWeightTransferUpdateInfo(**update_info))

        def finish_weight_update(self, weight_version=None):
            pass

    worker = Worker()
    info = wt.GlooTrainerInitInfo(
        rank=0, master_address="127.0.0.1", world_size=2, bucket_bytes=256, timeout_s=30
    )
    assert asdict(info)["master_port"] == 0
    source = wt.NamedTensorSource(lambda: iter(state.items()))
    trainer = wt.GlooTrainerWeightTransferEngine.trainer_init(info, client=worker, source=source)
    trainer.send_weights()
    assert set(received) == set(state)
    for name, tensor in state.items():
        assert received[name].dtype == tensor.dtype and torch.equal(received[name], tensor)

    # Tensors that disagree with the declared metadata are refused on the trainer side,
    # as are a missing and an extra tensor.
    metas = source.metadata()
    wrong_dtype = [("w", state["w"]), ("b", state["b"].float())]
    with pytest.raises(ValueError, match="'b' torch.float32"):
        list(wt._checked(iter(wrong_dtype), metas))
    with pytest.raises(ValueError, match="yielded 2 tensors, metadata declared 4"):
        list(wt._checked(iter(list(state.items())[:2]), metas))
    with pytest.raises(ValueError, match="'extra'"):
        list(wt._checked(iter([*state.items(), ("extra", state["w"])]), metas))
