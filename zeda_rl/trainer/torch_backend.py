"""The torch trainer backend: the transformers ZEDA model trained data-parallel with
torch.distributed (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from zeda_rl.trainer.batch import Batch
from zeda_rl.trainer.distributed import destroy_process_group, init_process_group
from zeda_rl.trainer.interface import RankSpec
from zeda_rl.trainer.step import StepBackend


class TorchBackend(StepBackend):
    """The transformers ZEDA model, data-parallel over torch.distributed."""

    def __init__(self, model_dir: str, spec: RankSpec):
        from zeda_rl.models.registry import load_zeda_model

        init_process_group(rank=spec.rank, world_size=spec.world_size, init_method=spec.init_method)
        self._setup(spec)
        self.model = load_zeda_model(model_dir, dtype=torch.float32).to(self.device).train()
        self._read_model_config(self.model.config)
        self.moe_layers = self._moe_layers()
        self.optimizer = self._make_optimizer(
            [p for p in self.model.parameters() if p.requires_grad]
        )

    def _moe_layers(self) -> list[int]:
        probe = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        with torch.no_grad():
            return [r.layer_idx for r in self.model(input_ids=probe).routing]

    def _forward(self, batch: Batch) -> tuple[torch.Tensor, list]:
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            routing_replay=batch.replay,
            routing_mask=self._routing_mask(batch),
        )
        return out.logits, out.routing

    def _gradient_groups(self):
        return [([p for p in self.model.parameters() if p.requires_grad], dist.group.WORLD)]

    # -- export, checkpoints ----------------------------------------------------------------

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The student's weights under the transformers names the vLLM plugin loads."""
        for name, tensor in self.model.state_dict().items():
            yield name, tensor.detach()

    def save(self, directory: Path) -> None:
        """Rank 0 writes the model (HF format) and the optimizer state into ``directory``."""
        if self.rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(directory)
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "step": self.step},
                directory / "optimizer.pt",
            )
        if self.world_size > 1:
            dist.barrier()

    def load_optimizer(self, directory: Path) -> None:
        state = torch.load(directory / "optimizer.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def close(self) -> None:
        destroy_process_group()
