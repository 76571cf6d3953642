"""An offline tokenizer: byte-level BPE trained on the project's own corpus.

Digits are split one per token (arithmetic is learnable digit by digit) and the chat
markers are special tokens. Saved in Hugging Face format with a chat template, so the
teacher can be prompted the way the paper prompts its models.
"""

from __future__ import annotations

from collections.abc import Iterable

USER, ASSISTANT, END, EOS, PAD = "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>", "<|pad|>"
SPECIAL_TOKENS = [PAD, EOS, USER, ASSISTANT, END]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    + ASSISTANT
    + "{{ message['content'] }}"
    + END
    + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def chat_prompt(prompt: str) -> str:
    """The text a model continues to answer ``prompt`` (same as the chat template's output)."""
    return f"{USER}{prompt}{ASSISTANT}"


def chat_example(prompt: str, response: str) -> str:
    return f"{USER}{prompt}{ASSISTANT}{response}{END}"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """Train the BPE and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=END,
        bos_token=None,
        additional_special_tokens=[EOS, USER, ASSISTANT],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.model_max_length = 1024
    return wrapped
