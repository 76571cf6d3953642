"""The megatron-core trainer backend: the ZEDA student as a GPTModel with expert parallelism.

Ranks form one data-parallel group for the dense weights; with ``expert_parallel = EP`` the
routed experts are split over EP ranks (global expert ``e`` on rank ``e // (N / EP)``) and
megatron's allgather dispatcher sends every rank's real picks to the rank that holds the
expert. Every forward and backward is then a collective over the EP group, so the ranks
run the same micro-batches in step (``StepBackend.lockstep``), as do ``logprobs``,
``named_tensors`` (which gathers the experts) and ``save``: call them on every rank.

Weights are loaded from and exported to transformers names (state_mapping.py), so checkpoints,
the vLLM rollout engines and the torch backend all share one format. The step logic (losses,
GAL, R3, metrics) is ``StepBackend``'s; the Group Auxiliary Loss reads the same routing
records as in the transformers model, written by the ZEDA router (router.py).

Runs here: CPU, gloo, tensor and pipeline parallel 1 (megatron's local modules train MoE
with TP > 1 only under sequence parallelism, which needs transformer-engine's norms).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from zeda_rl.models.zero_experts import RoutingState
from zeda_rl.trainer.batch import Batch
from zeda_rl.trainer.distributed import destroy_process_group, init_process_group
from zeda_rl.trainer.interface import RankSpec
from zeda_rl.trainer.step import StepBackend


def load_hf_state(model_dir: str | Path, keep=lambda name: True) -> dict[str, torch.Tensor]:
    """The tensors of a transformers checkpoint folder whose names ``keep`` accepts."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    out = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if keep(name):
                    out[name] = f.get_tensor(name)
    return out


def init_model_parallel(
    *, rank: int, world_size: int, init_method: str, expert_parallel: int
) -> None:
    """torch.distributed (gloo on CPU, NCCL on GPU) and megatron's parallel state."""
    from megatron.core import parallel_state

    if world_size % expert_parallel:
        raise ValueError(
            f"trainer.expert_parallel={expert_parallel} must divide trainer.num_workers="
            f"{world_size}"
        )
    init_process_group(rank=rank, world_size=world_size, init_method=init_method)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=1,
            pipeline_model_parallel_size=1,
            expert_model_parallel_size=expert_parallel,
        )


def megatron_forward(
    model,
    routing: RoutingState,
    ids: torch.Tensor,
    positions: torch.Tensor,
    token_mask: torch.Tensor | None = None,
    replay: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list]:
    """Logits ``[B, S, V]`` (fp32) and the MoE layers' routing records of one forward.
    Right padding under the causal mask needs no attention mask; ``token_mask`` keeps the
    padding out of the routing statistics."""
    routing.begin(None if token_mask is None else token_mask.reshape(-1).bool(), replay)
    try:
        logits = model(ids, positions, None)
    except BaseException:
        routing.begin(None, None)  # drop the half-finished forward's state
        raise
    return logits.float(), routing.end()


class MegatronBackend(StepBackend):
    lockstep = True

    def __init__(
        self,
        model_dir: str,
        spec: RankSpec,
        *,
        expert_parallel: int = 1,
        tensor_parallel: int = 1,
        pipeline_parallel: int = 1,
    ):
        from transformers import AutoConfig

        from zeda_rl.cpu_shims import megatron_core_on_cpu
        from zeda_rl.models.registry import register

        if tensor_parallel != 1 or pipeline_parallel != 1:
            raise ValueError(
                f"trainer.tensor_parallel={tensor_parallel}, trainer.pipeline_parallel="
                f"{pipeline_parallel}: the megatron backend runs TP = PP = 1 (MoE with TP > 1 "
                "needs sequence parallelism, i.e. transformer-engine); use expert_parallel"
            )
        megatron_core_on_cpu()  # before any megatron model module is imported
        register()
        self.hf_config = AutoConfig.from_pretrained(model_dir)
        if not hasattr(self.hf_config, "num_zero_experts"):
            raise ValueError(f"{model_dir} is not a ZEDA checkpoint (convert it first)")
        self.model_dir = Path(model_dir)
        init_model_parallel(
            rank=spec.rank,
            world_size=spec.world_size,
            init_method=spec.init_method,
            expert_parallel=expert_parallel,
        )
        self._setup(spec)
        from megatron.core import parallel_state

        from zeda_rl.trainer.megatron.model import build_gpt_model, moe_layer_pattern
        from zeda_rl.trainer.megatron.state_mapping import (
            experts_on_rank,
            hf_to_megatron,
            is_expert_of,
        )

        config = self.hf_config
        self.ep_size = expert_parallel
        self.ep_rank = parallel_state.get_expert_model_parallel_rank()
        self.routing = RoutingState()
        self.model = build_gpt_model(config, self.routing, expert_parallel=expert_parallel)
        self.model.to(self.device)
        mine = experts_on_rank(config, self.ep_rank, self.ep_size)
        checkpoint = load_hf_state(model_dir, keep=lambda name: is_expert_of(name, mine))
        state = hf_to_megatron(checkpoint, config, ep_rank=self.ep_rank, ep_size=self.ep_size)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith("_extra_state")]
        if missing or unexpected:
            raise ValueError(
                f"{model_dir}: megatron model and checkpoint disagree: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        self.local_experts = list(mine)
        self._read_model_config(config)
        self.moe_layers = [i for i, moe in enumerate(moe_layer_pattern(config)) if moe]
        # The correction bias is a buffer (frozen); everything else trains.
        self.optimizer = self._make_optimizer(list(self.model.parameters()))
        self.model.train()

    # -- StepBackend hooks ------------------------------------------------------------------

    def _forward(self, batch: Batch) -> tuple[torch.Tensor, list]:
        ids = batch.input_ids
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        mask = self._routing_mask(batch)
        return megatron_forward(
            self.model,
            self.routing,
            ids,
            positions,
            batch.attention_mask if mask is None else mask,
            batch.replay,
        )

    def _gradient_groups(self):
        """Dense weights: summed over the data-parallel group (every rank); experts: over the
        expert-data-parallel group (ranks holding the same experts; size 1 when EP = world).
        Megatron marks expert parameters with ``allreduce = False``."""
        from megatron.core import parallel_state

        params = list(self.model.parameters())
        dense = [p for p in params if getattr(p, "allreduce", True)]
        experts = [p for p in params if not getattr(p, "allreduce", True)]
        return [
            (dense, parallel_state.get_data_parallel_group()),
            (experts, parallel_state.get_expert_data_parallel_group()),
        ]

    def _clip_gradients(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """Clip by the norm of the whole model's gradient: dense weights are replicated, so
        counted once; expert gradients live on their EP rank and are summed over ranks."""
        dense = [p.grad for p in params if getattr(p, "allreduce", True)]
        experts = [p.grad for p in params if not getattr(p, "allreduce", True)]
        squares = torch.zeros(2, dtype=torch.float64, device=self.device)
        squares[0] = sum((g.double() ** 2).sum() for g in dense) if dense else 0.0
        squares[1] = sum((g.double() ** 2).sum() for g in experts) if experts else 0.0
        if self.ep_size > 1:
            from megatron.core import parallel_state

            expert_sq = squares[1:].clone()
            dist.all_reduce(expert_sq, group=parallel_state.get_expert_model_parallel_group())
            squares[1] = expert_sq[0]
        norm = squares.sum().sqrt()
        scale = self.optim.grad_clip / (float(norm) + 1e-6)
        if scale < 1.0:
            for p in params:
                p.grad.mul_(scale)
        return norm.float()

    # -- export, checkpoints ----------------------------------------------------------------

    def _hf_state(self) -> dict[str, torch.Tensor]:
        """The full transformers state dict; experts gathered over the EP group (collective:
        every rank calls it)."""
        from megatron.core import parallel_state

        from zeda_rl.trainer.megatron.state_mapping import megatron_to_hf

        rest, local = {}, {}
        for name, tensor in self.model.state_dict().items():
            if name.endswith("_extra_state"):
                continue
            (local if ".local_experts." in name else rest)[name] = tensor.detach()
        experts = {}
        per_rank = len(self.local_experts)
        for name, tensor in local.items():
            prefix, suffix = name.split(".local_experts.")
            k, param = suffix.split(".", 1)
            if self.ep_size == 1:
                experts[f"{prefix}.local_experts.{k}.{param}"] = tensor
                continue
            gathered = [torch.empty_like(tensor) for _ in range(self.ep_size)]
            dist.all_gather(
                gathered, tensor, group=parallel_state.get_expert_model_parallel_group()
            )
            for r, t in enumerate(gathered):
                experts[f"{prefix}.local_experts.{r * per_rank + int(k)}.{param}"] = t
        return megatron_to_hf(experts, rest, self.hf_config)

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The student's weights under transformers names (collective with EP > 1)."""
        yield from self._hf_state().items()

    def save(self, directory: Path) -> None:
        """Every rank: gather the model; rank 0 writes it (transformers format); each rank
        writes its own optimizer state (its experts' moments differ)."""
        from safetensors.torch import save_file

        from zeda_rl.trainer.megatron.state_mapping import to_checkpoint_layout

        state = to_checkpoint_layout(self._hf_state())
        directory.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            self.hf_config.save_pretrained(directory)
            save_file(
                {k: v.contiguous().cpu() for k, v in state.items()},
                str(directory / "model.safetensors"),
                metadata={"format": "pt"},
            )
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "step": self.step},
            directory / f"optimizer-rank{self.rank}.pt",
        )
        if self.rank == 0:
            layout = {"backend": "megatron", "world_size": self.world_size, "ep": self.ep_size}
            (directory / "trainer_layout.json").write_text(json.dumps(layout) + "\n")
        dist.barrier()

    def load_optimizer(self, directory: Path) -> None:
        layout_file = directory / "trainer_layout.json"
        layout = json.loads(layout_file.read_text()) if layout_file.is_file() else None
        expected = {"backend": "megatron", "world_size": self.world_size, "ep": self.ep_size}
        if layout != expected:
            raise ValueError(
                f"{directory}: optimizer state written by {layout}, this trainer is {expected}"
            )
        state = torch.load(directory / f"optimizer-rank{self.rank}.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def close(self) -> None:
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
        destroy_process_group()
