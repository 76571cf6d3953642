"""``zeda_gloo``: a backend for vLLM's weight transfer API that runs on CPU.

vLLM moves trainer weights into its workers through a pluggable weight transfer API: the
trainer drives ``init_weight_transfer_engine`` / ``start_weight_update`` /
``update_weights`` / ``finish_weight_update`` on the engine while it broadcasts the tensors
over a private group. Its built-in backends need CUDA (``nccl`` broadcast, ``ipc`` handles).
This one is the same protocol over a private gloo group, so the collective path the GPU
runs (rank 0 = trainer, ranks 1.. = rollout workers, received weights loaded through vLLM's
layerwise reload) is exercised on this machine too. Tensors travel in packed byte buckets:
one broadcast per ~``bucket_bytes``, cut identically on both sides from the metadata.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

BACKEND = "zeda_gloo"
_ALIGN = 16  # byte offset of every tensor in a bucket, so .view(dtype) is always legal


def register_engines() -> None:
    """Make ``zeda_gloo`` known to vLLM's worker and trainer engine factories (idempotent)."""
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, __name__, "GlooWeightTransferEngine")
    if BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(
            BACKEND, __name__, "GlooTrainerWeightTransferEngine"
        )


@dataclass(kw_only=True)
class GlooWeightTransferInitInfo(WeightTransferInitInfo):
    """What a rollout worker needs to join the trainer's group."""

    master_address: str
    master_port: int
    rank_offset: int  # group rank of this engine's first worker
    world_size: int
    bucket_bytes: int
    timeout_s: float


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """Trainer side; ``master_port=0`` lets the trainer's store pick a free port."""

    backend: ClassVar[str] = BACKEND

    master_address: str
    world_size: int  # 1 trainer sender + every rollout worker
    master_port: int = 0
    bucket_bytes: int = 64 << 20
    timeout_s: float = 600.0


@dataclass
class GlooWeightTransferUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]


@dataclass(frozen=True)
class _Slot:
    index: int  # position in the metadata
    offset: int  # bytes into the bucket
    nbytes: int


def bucket_plan(metas: list[ParamMeta], bucket_bytes: int) -> list[tuple[int, list[_Slot]]]:
    """Cut the metadata into buckets of at most ``bucket_bytes`` (a bigger tensor goes alone):
    ``[(bucket size, slots)]``. Sender and receivers derive the same plan."""
    plan: list[tuple[int, list[_Slot]]] = []
    slots: list[_Slot] = []
    size = 0
    for i, meta in enumerate(metas):
        nbytes = meta.dtype.itemsize * _numel(meta.shape)
        offset = -(-size // _ALIGN) * _ALIGN
        if slots and offset + nbytes > bucket_bytes:
            plan.append((size, slots))
            slots, offset = [], 0
        slots.append(_Slot(i, offset, nbytes))
        size = offset + nbytes
    if slots:
        plan.append((size, slots))
    return plan


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _metas(update: GlooWeightTransferUpdateInfo) -> list[ParamMeta]:
    return [
        ParamMeta(n, getattr(torch, d), tuple(s))
        for n, d, s in zip(update.names, update.dtype_names, update.shapes, strict=True)
    ]


def open_group(
    address: str, port: int, rank: int, world_size: int, timeout_s: float, store=None
) -> torch.distributed.ProcessGroup:
    """A gloo group of its own, next to (not inside) any default process group the process
    already has: vLLM's workers and the trainer's data-parallel ranks each keep theirs."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore(address, port, world_size, is_master=False, timeout=timeout)
    return dist.ProcessGroupGloo(dist.PrefixStore("zeda_weights", store), rank, world_size, timeout)


class GlooWeightTransferEngine(
    WeightTransferEngine[GlooWeightTransferInitInfo, GlooWeightTransferUpdateInfo]
):
    """Worker side: receive the trainer's buckets and load them through layerwise reload."""

    init_info_cls = GlooWeightTransferInitInfo
    update_info_cls = GlooWeightTransferUpdateInfo

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group = None
        self.bucket_bytes = 0

    def init_transfer_engine(self, init_info: GlooWeightTransferInitInfo) -> None:
        parallel = self.parallel_config
        worker = parallel.data_parallel_index * parallel.world_size + parallel.rank
        self.bucket_bytes = init_info.bucket_bytes
        self.group = open_group(
            init_info.master_address,
            init_info.master_port,
            init_info.rank_offset + worker,
            init_info.world_size,
            init_info.timeout_s,
        )

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict) -> None:
        # gloo works on host tensors and returns when the data is there: no device sync
        # (the base class's torch.accelerator.synchronize() fails without an accelerator).
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooWeightTransferUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("zeda_gloo weight transfer: init_weight_transfer_engine first")
        metas = _metas(update_info)
        for size, slots in bucket_plan(metas, self.bucket_bytes):
            buffer = torch.empty(size, dtype=torch.uint8)
            self.group.broadcast(buffer, 0).wait()
            weights = []
            for slot in slots:
                meta = metas[slot.index]
                raw = buffer[slot.offset : slot.offset + slot.nbytes]
                weights.append((meta.name, raw.view(meta.dtype).view(meta.shape)))
            self.model.load_weights(weights)

    def shutdown(self) -> None:
        self.group = None


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side. Rank 0 sends; other trainer ranks only replay the source iteration
    (which is where a sharded trainer gathers its shards)."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client, source, is_sender: bool, bucket_bytes: int) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.bucket_bytes = bucket_bytes
        self.group = None
        self._store = None

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None):
        import torch.distributed as dist

        if source is None:
            raise ValueError("zeda_gloo weight transfer needs a WeightSource")
        engine = cls(
            client=client,
            source=source,
            is_sender=init_info.is_sender,
            bucket_bytes=init_info.bucket_bytes,
        )
        if not engine.is_sender:
            return engine
        # The trainer hosts the rendezvous store; port 0 lets the OS choose a free one.
        engine._store = dist.TCPStore(
            init_info.master_address,
            init_info.master_port,
            init_info.world_size,
            is_master=True,
            timeout=datetime.timedelta(seconds=init_info.timeout_s),
            wait_for_workers=False,
        )
        worker_info = GlooWeightTransferInitInfo(
            master_address=init_info.master_address,
            master_port=engine._store.port,
            rank_offset=1,
            world_size=init_info.world_size,
            bucket_bytes=init_info.bucket_bytes,
            timeout_s=init_info.timeout_s,
        )
        with ThreadPoolExecutor(max_workers=1) as pool:
            joined = pool.submit(client.init_weight_transfer_engine, asdict(worker_info))
            engine.group = open_group(
                init_info.master_address,
                engine._store.port,
                0,
                init_info.world_size,
                init_info.timeout_s,
                store=engine._store,
            )
            joined.result()
        return engine

    def send_weights(self) -> None:
        metas = self.source.metadata()
        if not self.is_sender:
            for _ in self.source:
                pass
            return
        update = GlooWeightTransferUpdateInfo(
            names=[m.name for m in metas],
            dtype_names=[str(m.dtype).removeprefix("torch.") for m in metas],
            shapes=[list(m.shape) for m in metas],
        )
        self.client.start_weight_update()
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            received = pool.submit(self.client.update_weights, asdict(update))
            self._broadcast(metas)
            received.result()
        finally:
            # If the broadcast failed the workers may still be waiting in it: do not join.
            pool.shutdown(wait=False)
        self.client.finish_weight_update()

    def _broadcast(self, metas: list[ParamMeta]) -> None:
        tensors = _checked(self.source, metas)
        for size, slots in bucket_plan(metas, self.bucket_bytes):
            buffer = torch.empty(size, dtype=torch.uint8)
            for slot in slots:
                flat = next(tensors).detach().contiguous().view(-1).cpu()
                buffer[slot.offset : slot.offset + slot.nbytes] = flat.view(torch.uint8)
            self.group.broadcast(buffer, 0).wait()
        for _ in tensors:  # an extra tensor raises; so does a missing one, above
            pass

    def shutdown(self) -> None:
        self.group = None
        self._store = None


def _checked(source: WeightSource, metas: list[ParamMeta]) -> Iterator[torch.Tensor]:
    """The source's tensors, each checked against the metadata the workers sized their
    buffers from (a mismatch would otherwise load garbage)."""
    count = 0
    for name, tensor in source:
        meta = metas[count] if count < len(metas) else None
        if meta is None or (name, tensor.dtype, tuple(tensor.shape)) != (
            meta.name,
            meta.dtype,
            meta.shape,
        ):
            raise ValueError(
                f"weight source yielded {name!r} {tensor.dtype} {tuple(tensor.shape)} where "
                f"its metadata declared {meta}"
            )
        count += 1
        yield tensor
    if count != len(metas):
        raise ValueError(f"weight source yielded {count} tensors, metadata declared {len(metas)}")


class NamedTensorSource(WeightSource):
    """vLLM's ``WeightSource`` over a trainer backend's ``named_tensors()`` (transformers
    names, the trainer's dtype: vLLM casts on load, so fp32 buffers such as GLM's correction
    bias stay exact)."""

    def __init__(self, named_tensors) -> None:
        self._named_tensors = named_tensors
        self._metadata: list[ParamMeta] | None = None

    def metadata(self) -> list[ParamMeta]:
        """Read once: names, dtypes and shapes do not change between syncs, and a sharded
        backend's ``named_tensors()`` gathers its shards (every rank takes this path
        together, so the first call is a collective on all of them)."""
        if self._metadata is None:
            self._metadata = [
                ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self._named_tensors()
            ]
        return self._metadata

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self._named_tensors())


class RolloutFleetClient:
    """vLLM's weight-sync control plane (``VLLMWeightSyncClient``) over every rollout actor.

    Each call goes to all engines and waits for all of them. vLLM's trainer engines place the
    workers of *one* engine at group ranks ``rank_offset..``; here engine ``i`` gets
    ``rank_offset + i * workers_per_engine`` so several engines share one group.
    """

    def __init__(self, rollouts: list, workers_per_engine: int, timeout_s: float) -> None:
        self.rollouts = rollouts
        self.workers_per_engine = workers_per_engine
        self.timeout_s = timeout_s

    def _all(self, method: str, per_engine: list[tuple] | None = None):
        import ray

        args = per_engine or [()] * len(self.rollouts)
        refs = [getattr(r, method).remote(*a) for r, a in zip(self.rollouts, args, strict=True)]
        return ray.get(refs, timeout=self.timeout_s)

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        infos = [
            {**init_info, "rank_offset": init_info["rank_offset"] + i * self.workers_per_engine}
            if "rank_offset" in init_info
            else init_info
            for i in range(len(self.rollouts))
        ]
        self._all("init_weight_transfer_engine", [(info,) for info in infos])

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info) -> None:
        self._all("update_weights", [(update_info,)] * len(self.rollouts))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update")


def connect_trainer(
    method: str,
    *,
    rank: int,
    named_tensors,
    rollouts: list,
    workers_per_engine: int,
    bucket_bytes: int,
    timeout_s: float,
):
    """This trainer rank's end of vLLM's weight transfer for ``method``, connected to every
    rollout engine (call it on all trainer ranks; rank 0 sends)."""
    import ray
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    from zeda_rl.trainer.distributed import free_port

    register_engines()
    world_size = 1 + len(rollouts) * workers_per_engine
    address = ray.util.get_node_ip_address()
    if method == "gloo":
        info = GlooTrainerInitInfo(
            rank=rank,
            master_address=address,
            world_size=world_size,
            bucket_bytes=bucket_bytes,
            timeout_s=timeout_s,
        )
    elif method == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        info = NCCLTrainerInitInfo(
            rank=rank, master_address=address, master_port=free_port(""), world_size=world_size
        )
    elif method == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        info = IPCTrainerInitInfo(rank=rank)
    else:
        raise ValueError(f"weight_sync.method={method!r}: gloo | nccl | ipc")
    return WeightTransferTrainerFactory.trainer_init(
        info,
        client=RolloutFleetClient(rollouts, workers_per_engine, timeout_s),
        source=NamedTensorSource(named_tensors),
    )
