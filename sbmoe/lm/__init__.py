"""Tiny MoE language-model testbed on the shared MoE core (ReXMoE experiments)."""
