"""Trainer backends: the student's optimisation, behind one interface (``backend.py``)."""
