"""Offline data: corpora, structured tasks, benchmarks and the tokenizer."""
