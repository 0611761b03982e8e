"""How close the fp32 corpus encode runs to this CPU's own matrix-multiply rate: the floor under the main job.

The main job's wall time is almost all corpus encoding (BEIR: 281 of 293 s on SciFact). This counts the
arithmetic of encoding a SciFact slice with all-MiniLM-L6-v2 (each document's own tokens after truncation: the
six layers' matrix products, 2 x 10.6 M multiply-adds per token, plus attention, 4 x length x 384 per token and
layer), times the encode with sentence-transformers (torch, BEIR's encoder) and with sbmoe's torch and ONNX Runtime
fp32 and int8 backends (and the opt-in torch-bf16 on a CPU with bf16 instructions), and measures the best fp32 GEMM
rate of torch and of ONNX Runtime at the model's own shapes (and torch's bf16 rate), all in one run. Achieved GFLOP/s
over the GEMM rate says how much an fp32 backend could still gain; the GEMM rate gives the fastest the encode could
be at fp32. Run it alone on the machine.

    python eval/encode_roofline.py [--docs 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
HIDDEN, FFN, LAYERS = 384, 1536, 6  # all-MiniLM-L6-v2


def flops_per_document(tokens: int) -> float:
    """fp32 operations of one document of ``tokens`` tokens through the six layers (2 per multiply-add)."""
    linear = 2 * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)  # Q, K, V, output; the two FFN matrices
    attention = 4 * tokens * HIDDEN  # scores and the weighted sum, per token
    return LAYERS * tokens * (linear + attention)


def torch_gemm_gflops(rows: int, inner: int, cols: int, seconds: float = 3.0, dtype: str = "float32") -> float:
    import torch

    a, b = torch.randn(rows, inner, dtype=getattr(torch, dtype)), torch.randn(inner, cols, dtype=getattr(torch, dtype))
    torch.mm(a, b)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * rows * inner * cols * count / (time.perf_counter() - started) / 1e9


def ort_gemm_gflops(rows: int, inner: int, cols: int, threads: int, seconds: float = 3.0) -> float:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((inner, cols), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, inner])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, cols])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(model, str(path))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((rows, inner), dtype=np.float32)
    session.run(None, {"x": x})
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {"x": x})
        count += 1
    return 2 * rows * inner * cols * count / (time.perf_counter() - started) / 1e9


def timed_encode(encode, texts: list[str]) -> float:
    encode(texts[:16])  # warm-up: first-call allocations and thread start-up are not the encode's rate
    started = time.perf_counter()
    encode(texts)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000, help="SciFact documents (corpus order) to encode.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=OUT)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from bench_main_job import machine, minilm

    from sbmoe.atomic import atomic_file, write_json
    from sbmoe.data import BeirDataset
    from sbmoe.models.bf16 import cpu_has_bf16
    from sbmoe.models.encoder import EncoderConfig, load_encoder
    from sbmoe.models.encoding import encode_texts

    dataset = BeirDataset.open("scifact")
    texts = [doc.as_text() for chunk in dataset.iter_corpus_chunks(args.docs) for doc in chunk][:args.docs]
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm(), device="cpu")
    lengths = [len(ids) for ids in st.tokenizer(texts, truncation=True, max_length=st.max_seq_length)["input_ids"]]
    flops = float(sum(flops_per_document(n) for n in lengths))
    encodes: dict[str, float] = {}
    bf16 = cpu_has_bf16()
    with tempfile.TemporaryDirectory() as cache:  # sbmoe's ONNX graphs built here, not timed
        os.environ["SBMOE_CACHE"] = cache
        encodes["sentence-transformers (torch; BEIR's encoder)"] = timed_encode(
            lambda t: st.encode(t, batch_size=64, convert_to_numpy=True), texts)
        for backend in ("torch", "onnx", "onnx-int8", *(("torch-bf16",) if bf16 else ())):
            model = load_encoder(EncoderConfig(model="minilm", backend=backend))
            encodes[f"sbmoe --backend {backend}"] = timed_encode(
                lambda t, m=model: encode_texts(m, t, 64, task="document"), texts)
            del model
    shapes = {"Q/K/V/output (tokens x 384 x 384)": (4096, HIDDEN, HIDDEN),
              "FFN in (tokens x 384 x 1536)": (4096, HIDDEN, FFN), "FFN out (tokens x 1536 x 384)": (4096, FFN, HIDDEN)}
    gemm = {name: {"torch": round(torch_gemm_gflops(*shape), 1), "onnxruntime": round(ort_gemm_gflops(
        *shape, args.threads), 1)} for name, shape in shapes.items()}
    gemm_bf16 = {name: round(torch_gemm_gflops(*shape, dtype="bfloat16"), 1) for name, shape in shapes.items()} \
        if bf16 else {}
    # the encode's own mix: four 384x384 products and two FFN products per layer, weighted by their work
    work = {"Q/K/V/output (tokens x 384 x 384)": 4 * HIDDEN * HIDDEN, "FFN in (tokens x 384 x 1536)": HIDDEN * FFN,
            "FFN out (tokens x 1536 x 384)": HIDDEN * FFN}
    rate = sum(work.values()) / sum(w / max(gemm[n].values()) for n, w in work.items())
    rows = {name: {"seconds": round(s, 2), "docs_per_s": round(len(texts) / s, 2),
                   "gflops": round(flops / s / 1e9, 1), "of_gemm_rate": round(flops / s / 1e9 / rate, 3)}
            for name, s in encodes.items()}
    record = {"command": " ".join(["python", "eval/encode_roofline.py", *sys.argv[1:]]),
              "machine": machine(args.threads),
              "documents": len(texts), "tokens": int(sum(lengths)), "mean_tokens": round(float(np.mean(lengths)), 1),
              "max_length": st.max_seq_length, "gflop": round(flops / 1e9, 1), "gemm_gflops": gemm,
              "gemm_rate_for_the_mix": round(rate, 1), "torch_bf16_gemm_gflops": gemm_bf16, "encodes": rows,
              "floor_seconds_at_gemm_rate": round(flops / rate / 1e9, 2)}
    write_json(args.output_dir / "encode_roofline.json", record)
    base = rows["sentence-transformers (torch; BEIR's encoder)"]["seconds"]
    lines = ["# The fp32 encode against this CPU's matrix-multiply rate", "", f"Command: `{record['command']}`", "",
             f"CPU: {record['machine']['cpu']}, {record['machine']['cores']} cores, {args.threads} threads, flags "
             f"{', '.join(record['machine']['cpu_flags'])}; torch {record['machine']['versions']['torch']}, "
             f"onnxruntime {record['machine']['versions']['onnxruntime']}.", "",
             f"{len(texts)} SciFact documents, {record['tokens']:,} tokens after truncation at {st.max_seq_length} "
             f"(mean {record['mean_tokens']}), {record['gflop']} GFLOP of fp32 arithmetic through all-MiniLM-L6-v2.",
             "",
             "| GEMM, GFLOP/s | torch fp32 | onnxruntime fp32 | torch bf16 |", "|---|---|---|---|"]
    lines += [f"| {name} | {v['torch']} | {v['onnxruntime']} | {gemm_bf16.get(name, 'no bf16 instructions')} |"
              for name, v in gemm.items()]
    lines += ["", f"The best fp32 rate at the encode's mix of shapes: **{rate:.1f} GFLOP/s**; at that rate the slice "
              f"would encode in {record['floor_seconds_at_gemm_rate']} s.", "",
              "| encode | seconds | docs/s | GFLOP/s | of the GEMM rate | x sentence-transformers |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['seconds']} | {r['docs_per_s']} | {r['gflops']} | {r['of_gemm_rate']:.0%} | "
              f"{r['seconds'] / base:.2f} |" for name, r in rows.items()]
    lines += ["", "int8 and bf16 move a quarter and half of fp32's bytes per multiply-add, so their GFLOP/s (counted "
              "as fp32 work) can pass the fp32 rate; the fp32 rows cannot."]
    with atomic_file(args.output_dir / "encode_roofline.md") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
