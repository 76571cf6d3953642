"""Ray actor pools: vLLM rollout engines (student), the frozen teacher, trainer workers."""
