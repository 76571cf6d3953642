"""Transformers <-> megatron-core state dicts of ZEDA models (and of the plain teachers).

Name map (``L`` a decoder layer, ``e`` a global expert, ``k`` its index on its EP rank):

=========================================== =================================================
transformers                                 megatron-core
=========================================== =================================================
model.embed_tokens.weight                    embedding.word_embeddings.weight
model.norm.weight / lm_head.weight           decoder.final_layernorm.weight / output_layer.weight
L.input_layernorm / post_attention_layernorm L.input_layernorm / L.pre_mlp_layernorm
L.self_attn.{q,k,v}_proj (Qwen3, GQA)        L.self_attention.linear_qkv, per KV group [q.., k, v]
L.self_attn.{q,k}_norm                       L.self_attention.{q,k}_layernorm
L.self_attn.q_a_proj / q_a_layernorm (GLM)   L.self_attention.linear_q_down_proj / q_layernorm
L.self_attn.q_b_proj                         L.self_attention.linear_q_up_proj
L.self_attn.kv_a_proj_with_mqa / kv_a_layern L.self_attention.linear_kv_down_proj / kv_layernorm
L.self_attn.kv_b_proj / o_proj               L.self_attention.linear_kv_up_proj / linear_proj
L.mlp.{gate,up,down}_proj (dense layer)      L.mlp.linear_fc1 = [gate; up], L.mlp.linear_fc2
L.mlp.gate.weight [N + N_Z, H]               L.mlp.router.weight (the grown router)
L.mlp.gate.e_score_correction_bias           L.mlp.router.e_score_correction_bias
L.mlp.experts.gate_up_proj[e] / down_proj[e] L.mlp.experts.local_experts.k.linear_fc1 / fc2
L.mlp.shared_experts.{gate,up,down}_proj     L.mlp.shared_experts.linear_fc1 = [gate; up], fc2
=========================================== =================================================

(``L`` is ``model.layers.i`` on the transformers side and ``decoder.layers.i`` on megatron's.)
Every map is a pure re-layout, so a round trip is exact.
"""

from __future__ import annotations

import torch

from zeda_rl.trainer.megatron.model import is_glm

_GLM_ATTENTION = {
    "q_a_proj.weight": "linear_q_down_proj.weight",
    "q_a_layernorm.weight": "q_layernorm.weight",
    "q_b_proj.weight": "linear_q_up_proj.weight",
    "kv_a_proj_with_mqa.weight": "linear_kv_down_proj.weight",
    "kv_a_layernorm.weight": "kv_layernorm.weight",
    "kv_b_proj.weight": "linear_kv_up_proj.weight",
    "o_proj.weight": "linear_proj.weight",
}
_QWEN_ATTENTION = {
    "q_norm.weight": "q_layernorm.weight",
    "k_norm.weight": "k_layernorm.weight",
    "o_proj.weight": "linear_proj.weight",
}
_TOP = {
    "model.embed_tokens.weight": "embedding.word_embeddings.weight",
    "model.norm.weight": "decoder.final_layernorm.weight",
    "lm_head.weight": "output_layer.weight",
}
_NORMS = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "pre_mlp_layernorm.weight",
}


def _qkv_pack(q, k, v, hf_config) -> torch.Tensor:
    groups, head_dim = hf_config.num_key_value_heads, hf_config.head_dim
    per_group = hf_config.num_attention_heads // groups
    hidden = q.shape[1]
    return torch.cat(
        [
            q.reshape(groups, per_group * head_dim, hidden),
            k.reshape(groups, head_dim, hidden),
            v.reshape(groups, head_dim, hidden),
        ],
        dim=1,
    ).reshape(-1, hidden)


def _qkv_unpack(qkv, hf_config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups, head_dim = hf_config.num_key_value_heads, hf_config.head_dim
    per_group = hf_config.num_attention_heads // groups
    hidden = qkv.shape[1]
    q, k, v = qkv.reshape(groups, (per_group + 2) * head_dim, hidden).split(
        [per_group * head_dim, head_dim, head_dim], dim=1
    )
    return q.reshape(-1, hidden), k.reshape(-1, hidden), v.reshape(-1, hidden)


def experts_on_rank(hf_config, ep_rank: int, ep_size: int) -> range:
    """The global expert ids that EP rank ``ep_rank`` holds (contiguous, as megatron)."""
    n = hf_config.num_routed_experts
    if n % ep_size:
        raise ValueError(f"{n} experts do not split over expert_parallel={ep_size}")
    per = n // ep_size
    return range(ep_rank * per, (ep_rank + 1) * per)


def hf_to_megatron(
    hf: dict[str, torch.Tensor], hf_config, *, ep_rank: int = 0, ep_size: int = 1
) -> dict[str, torch.Tensor]:
    """The megatron state dict of EP rank ``ep_rank`` (its experts only)."""
    out = {mg: hf[name] for name, mg in _TOP.items() if name in hf}
    glm = is_glm(hf_config)
    local = experts_on_rank(hf_config, ep_rank, ep_size)
    for i in range(hf_config.num_hidden_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        for name, mg in _NORMS.items():
            out[dst + mg] = hf[src + name]
        attn, sa = src + "self_attn.", dst + "self_attention."
        for name, mg in (_GLM_ATTENTION if glm else _QWEN_ATTENTION).items():
            out[sa + mg] = hf[attn + name]
        if not glm:
            out[sa + "linear_qkv.weight"] = _qkv_pack(
                hf[attn + "q_proj.weight"],
                hf[attn + "k_proj.weight"],
                hf[attn + "v_proj.weight"],
                hf_config,
            )
        mlp, mm = src + "mlp.", dst + "mlp."
        if mlp + "gate.weight" not in hf:  # a dense layer (GLM's first)
            out[mm + "linear_fc1.weight"] = torch.cat(
                [hf[mlp + "gate_proj.weight"], hf[mlp + "up_proj.weight"]]
            )
            out[mm + "linear_fc2.weight"] = hf[mlp + "down_proj.weight"]
            continue
        out[mm + "router.weight"] = hf[mlp + "gate.weight"]
        if glm:
            out[mm + "router.e_score_correction_bias"] = hf[mlp + "gate.e_score_correction_bias"]
            shared = mlp + "shared_experts."
            out[mm + "shared_experts.linear_fc1.weight"] = torch.cat(
                [hf[shared + "gate_proj.weight"], hf[shared + "up_proj.weight"]]
            )
            out[mm + "shared_experts.linear_fc2.weight"] = hf[shared + "down_proj.weight"]
        for k, e in enumerate(local):
            fc1, fc2 = _expert(hf, mlp, e)
            out[f"{mm}experts.local_experts.{k}.linear_fc1.weight"] = fc1
            out[f"{mm}experts.local_experts.{k}.linear_fc2.weight"] = fc2
    return out


def _expert(hf: dict[str, torch.Tensor], mlp: str, e: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert ``e``'s [gate; up] and down weights, from transformers' in-memory layout
    (``experts.gate_up_proj [N, 2I, H]``) or the checkpoint's (``experts.{e}.gate_proj``)."""
    if mlp + "experts.gate_up_proj" in hf:
        return hf[mlp + "experts.gate_up_proj"][e], hf[mlp + "experts.down_proj"][e]
    one = f"{mlp}experts.{e}."
    gate_up = torch.cat([hf[one + "gate_proj.weight"], hf[one + "up_proj.weight"]])
    return gate_up, hf[one + "down_proj.weight"]


def is_expert_of(name: str, experts: range) -> bool:
    """False for a checkpoint tensor of a routed expert outside ``experts`` (so an EP rank
    reads only its own experts from disk)."""
    if ".mlp.experts." not in name:
        return True
    index = name.split(".mlp.experts.")[1].split(".")[0]
    return not index.isdigit() or int(index) in experts


def to_checkpoint_layout(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' fused expert tensors split into the per-expert checkpoint names the
    original models ship with (what ``save_pretrained`` writes and every loader reads)."""
    out = {}
    for name, tensor in hf.items():
        if name.endswith("experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            for e, fused in enumerate(tensor):
                gate, up = fused.chunk(2)
                out[f"{prefix}{e}.gate_proj.weight"] = gate
                out[f"{prefix}{e}.up_proj.weight"] = up
        elif name.endswith("experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e, down in enumerate(tensor):
                out[f"{prefix}{e}.down_proj.weight"] = down
        else:
            out[name] = tensor
    return out


def megatron_to_hf(
    experts: dict[str, torch.Tensor], rest: dict[str, torch.Tensor], hf_config
) -> dict[str, torch.Tensor]:
    """Transformers state dict from megatron tensors: ``experts`` keyed by *global* expert
    id (``...local_experts.{e}...`` with ``e`` global, gathered over EP ranks) and ``rest``
    (every non-expert tensor, the same on all EP ranks)."""
    out = {name: rest[mg] for name, mg in _TOP.items() if mg in rest}
    if "lm_head.weight" not in out and hf_config.tie_word_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    glm = is_glm(hf_config)
    for i in range(hf_config.num_hidden_layers):
        dst, src = f"model.layers.{i}.", f"decoder.layers.{i}."
        for name, mg in _NORMS.items():
            out[dst + name] = rest[src + mg]
        attn, sa = dst + "self_attn.", src + "self_attention."
        for name, mg in (_GLM_ATTENTION if glm else _QWEN_ATTENTION).items():
            out[attn + name] = rest[sa + mg]
        if not glm:
            q, k, v = _qkv_unpack(rest[sa + "linear_qkv.weight"], hf_config)
            out[attn + "q_proj.weight"], out[attn + "k_proj.weight"] = q, k
            out[attn + "v_proj.weight"] = v
        mlp, mm = dst + "mlp.", src + "mlp."
        if mm + "router.weight" not in rest:
            gate, up = rest[mm + "linear_fc1.weight"].chunk(2)
            out[mlp + "gate_proj.weight"], out[mlp + "up_proj.weight"] = gate, up
            out[mlp + "down_proj.weight"] = rest[mm + "linear_fc2.weight"]
            continue
        out[mlp + "gate.weight"] = rest[mm + "router.weight"]
        if glm:
            out[mlp + "gate.e_score_correction_bias"] = rest[mm + "router.e_score_correction_bias"]
            gate, up = rest[mm + "shared_experts.linear_fc1.weight"].chunk(2)
            shared = mlp + "shared_experts."
            out[shared + "gate_proj.weight"], out[shared + "up_proj.weight"] = gate, up
            out[shared + "down_proj.weight"] = rest[mm + "shared_experts.linear_fc2.weight"]
        n = hf_config.num_routed_experts
        prefix = mm + "experts.local_experts."
        out[mlp + "experts.gate_up_proj"] = torch.stack(
            [experts[f"{prefix}{e}.linear_fc1.weight"] for e in range(n)]
        )
        out[mlp + "experts.down_proj"] = torch.stack(
            [experts[f"{prefix}{e}.linear_fc2.weight"] for e in range(n)]
        )
    return out
