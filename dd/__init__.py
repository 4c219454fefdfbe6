"""Distilled Decoding: the method (flow matching, student, losses, sampling, CLI)."""
