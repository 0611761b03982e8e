"""Fine-tuning: training pairs, losses, the sentence-transformers trainer, head-only embedding tables."""
