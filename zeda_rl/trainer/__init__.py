"""Trainer backends: the student's optimisation behind one interface (interface.py), picked
by name (registry.py); the shared step (step.py), torch (torch_backend.py), megatron/."""
