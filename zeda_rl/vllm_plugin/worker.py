"""Methods zeda_rl adds to vLLM's workers (``LLM(worker_extension_cls=WORKER_EXTENSION)``),
called from the driver with ``llm.collective_rpc("zeda_...")``.

Arguments and results cross process boundaries in the multiprocess engine, so they are
plain bytes and lists, never tensors (tensors do not pickle through collective_rpc).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

WORKER_EXTENSION = "zeda_rl.vllm_plugin.worker.ZedaWorkerExtension"


class ZedaWorkerExtension:
    # ``self`` is vLLM's worker; ``self.model_runner`` holds the model.

    def zeda_enable_route_capture(self) -> list[int]:
        """Record every request's expert ids from now on; returns the MoE layer indices."""
        from zeda_rl.vllm_plugin.moe import ZedaVllmMoe
        from zeda_rl.vllm_plugin.routes import RouteRecorder

        runner = self.model_runner
        model = runner.model
        if getattr(model, "route_recorder", None) is not None:
            return model.route_recorder.moe_layers
        blocks = [m for m in model.modules() if isinstance(m, ZedaVllmMoe)]
        if not blocks:
            raise ValueError("route capture needs a ZEDA model (no ZEDA MoE block found)")
        recorder = RouteRecorder(sorted(b.layer_id for b in blocks))
        for block in blocks:
            block.capture_fn = functools.partial(recorder.capture, block.layer_id)
        model.route_recorder = recorder
        execute = runner.execute_model

        def execute_model(scheduler_output, *args, **kwargs):
            recorder.begin_step()
            out = execute(scheduler_output, *args, **kwargs)
            # Rows are laid out in the persistent batch's request order.
            request_ids = list(runner.input_batch.req_ids)
            counts = [scheduler_output.num_scheduled_tokens[r] for r in request_ids]
            recorder.end_step(request_ids, counts)
            return out

        runner.execute_model = execute_model
        return recorder.moe_layers

    def zeda_take_routes(self) -> list[tuple[bytes, bytes, tuple[int, ...]]]:
        """(token ids int64 bytes, routes int16 bytes, routes shape) per recorded request."""
        recorder = self.model_runner.model.route_recorder
        return [
            (r.tokens.tobytes(), r.routes.tobytes(), r.routes.shape)
            for r in recorder.take().values()
        ]

    def zeda_reseed(self, seed: int) -> None:
        """Restart the sampler's random stream at ``seed`` (the default generators vLLM
        samples with when requests carry no seed of their own)."""
        import random

        import numpy as np

        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def zeda_load_weights(self, buckets: list[bytes]) -> int:
        """Load new weights (safetensors-serialised buckets of transformers-named tensors)
        in place through vLLM's reload path, which re-runs the per-layer post-processing
        (e.g. MLA's absorbed matrices, CPU GEMM packing). Returns the tensors loaded."""
        from safetensors.torch import load as load_safetensors

        count = 0

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            for bucket in buckets:
                for name, tensor in load_safetensors(bucket).items():
                    count += 1
                    yield name, tensor

        self.model_runner.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
        return count
