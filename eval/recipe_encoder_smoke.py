"""A smoke run of the training path before tier-E cells spend a lent GPU's minutes (eval/recipe_encoder_device.sh
setup): a tiny random BERT with minilm-l3's tokenizer, three bf16 steps of the paper's recipe on SciFact."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, BertConfig, BertModel

from sbmoe.training.config import TrainConfig
from sbmoe.training.trainer import train


def main() -> None:
    live, tmp = Path(os.environ["SBMOE_CACHE"]).parent, Path(tempfile.mkdtemp())
    tokenizer = AutoTokenizer.from_pretrained(live / "cache" / "models" / "minilm-l3")
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp / "tiny")
    tokenizer.save_pretrained(tmp / "tiny")
    train(TrainConfig.from_recipe("paper", model=str(tmp / "tiny"), data=str(live / "data" / "scifact"), split="train",
                                  dev_split="test", output=tmp / "out", max_steps=3, max_length=64, precision="bf16",
                                  show_progress=False, overwrite=True))
    print("smoke run trained:", (tmp / "out" / "sbmoe_train.json").is_file(), flush=True)


if __name__ == "__main__":
    main()
