"""The evaluation harness: task accuracy, zero-expert usage, teacher agreement."""
