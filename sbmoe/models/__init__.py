"""Encoders: model aliases, loading, encoding text and corpora, the embedding cache, the SB-MoE head."""
