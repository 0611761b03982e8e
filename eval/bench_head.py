"""SB-MoE head cost: its share of encoding time, and batched expert bank vs a per-expert Python loop.

    python eval/bench_head.py [--docs 512] [--steps 100]

1. Encoding: SciFact documents with all-MiniLM-L6-v2 + SB-MoE head (E = 6, mode all); the head's own
   forward time over the same pooled embeddings and batches, as a share of the whole encoding time.
2. Training: steps/s of a head training step (forward, backward, Adam) at batch 192 (64 triples), for the
   stacked-weight ExpertBank (two einsums) and for the same maths as a Python loop over experts, at
   E = 6 and E = 32.
Writes eval/results/bench_head.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from report import machine_line
from torch import Tensor, nn

from sbmoe.atomic import write_json
from sbmoe.data import BeirDataset
from sbmoe.models.encoder import EncoderConfig, load_encoder
from sbmoe.models.encoding import encode_texts
from sbmoe.models.pipeline import pooling_prefix, with_head
from sbmoe.models.sbmoe_head import SBMoEHead
from sbmoe.moe.experts import ExpertBank

RESULTS = Path(__file__).resolve().parent / "results"


class LoopExpertBank(ExpertBank):
    """The same experts and weights, evaluated one expert at a time in Python (the baseline)."""

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            out = out + weights[:, e:e + 1] * self.expert(e, x)
        return out


def training_steps_per_s(bank_cls: type[ExpertBank], experts: int, dim: int, rows: int, steps: int) -> float:
    torch.manual_seed(0)
    head = SBMoEHead(dim, experts, mode="all")
    head.experts = bank_cls(experts, dim, dim // 2)
    head.train()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-4)
    x = torch.randn(rows, dim)
    target = torch.randn(rows, dim)

    def step() -> None:
        out = head({"sentence_embedding": x})["sentence_embedding"]
        loss = nn.functional.mse_loss(out, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=512)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    texts = [d.as_text() for _, d in zip(range(args.docs), BeirDataset.open("scifact").iter_corpus(), strict=False)]
    base = load_encoder(EncoderConfig(model="minilm", backend="torch"))
    torch.manual_seed(0)
    head = SBMoEHead(base.get_embedding_dimension(), 6, mode="all").eval()
    model = with_head(base, head).eval()
    encode_texts(model, texts[:args.batch_size], args.batch_size)  # warm-up
    start = time.perf_counter()
    encode_texts(model, texts, args.batch_size)
    encode_seconds = time.perf_counter() - start
    pooled = torch.from_numpy(encode_texts(pooling_prefix(base), texts, args.batch_size))
    with torch.inference_mode():
        start = time.perf_counter()
        for i in range(0, len(pooled), args.batch_size):
            head({"sentence_embedding": pooled[i:i + args.batch_size]})
        head_seconds = time.perf_counter() - start
    share = head_seconds / encode_seconds

    rows = 3 * args.batch_size
    training = {}
    for experts in (6, 32):
        batched = training_steps_per_s(ExpertBank, experts, 384, rows, args.steps)
        looped = training_steps_per_s(LoopExpertBank, experts, 384, rows, args.steps)
        training[str(experts)] = {"batched_steps_per_s": round(batched, 1), "loop_steps_per_s": round(looped, 1),
                                  "speedup": round(batched / looped, 3)}

    print(f"encoding {len(texts)} SciFact docs with MiniLM + SB-MoE head (E=6, all): {encode_seconds:.1f} s; "
          f"head {head_seconds * 1000:.1f} ms = {100 * share:.2f}% of encoding")
    print(f"\n{'E':>3} {'batched steps/s':>16} {'loop steps/s':>13} {'speedup':>8}")
    for experts, r in training.items():
        print(f"{experts:>3} {r['batched_steps_per_s']:16.1f} {r['loop_steps_per_s']:13.1f} {r['speedup']:8.2f}")
    write_json(RESULTS / "bench_head.json", {
        "docs": len(texts), "encode_seconds": round(encode_seconds, 2), "head_seconds": round(head_seconds, 4),
        "head_share_of_encoding": round(share, 5), "training_rows_per_step": rows, "training": training,
        "machine": machine_line(),
    })


if __name__ == "__main__":
    main()
