"""The sentence encoder on ONNX Runtime: mean-pooled BERT models (all-MiniLM-L6-v2 and kin), no torch.

The packaged model is a safetensors file and a tokenizer.json. This module writes the BERT forward
pass (embeddings, attention layers, mean pooling, L2 normalisation) as an ONNX graph with the `onnx`
package, the weights as its initialisers, and runs it on ONNX Runtime with the `tokenizers` package
in front. Nothing is exported from torch, so neither torch nor transformers is needed at run time
or to build (see ARCHITECTURE.md for why). The built graphs are cached by a digest of the weights
and of this builder, so a second process loads them in a fraction of a second.

`lean_model` answers None for anything it does not reproduce exactly, and the caller then falls back
to sentence-transformers (the `[torch]` extra).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tokenizers.normalizers import Lowercase, Sequence

from streamer.runtime.model_files import cache_dir, write_atomically

log = logging.getLogger(__name__)

# Bump when the graph changes: cached graphs are keyed by it.
BUILDER_VERSION = "1"
OPSET = 17  # LayerNormalization is standard from 17 on

# Module types (last dotted part) of the one pipeline this loader reproduces; Normalize is optional
# because the output is always normalised.
_PIPELINES = (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"])
_LEGACY_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                 "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                 "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_LAYER_PARAMS = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"]


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pooling_modes(config: dict[str, Any]) -> list[str]:
    """The pooling modes, in the new (`pooling_mode`) or the legacy (`pooling_mode_*_tokens`) format."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return [mode] if isinstance(mode, str) else list(mode)
    # Legacy booleans; sentence-transformers treats "none set" as mean.
    return [mode for key, mode in _LEGACY_MODES.items() if config.get(key)] or ["mean"]


def _bert_settings(root: Path) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
    """(transformer directory, config.json, sentence_bert_config.json) if `root` is a mean-pooled BERT."""
    modules = _json(root / "modules.json")
    if not isinstance(modules, list) or [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules] not in _PIPELINES:
        return None
    if (_json(root / "config_sentence_transformers.json") or {}).get("default_prompt_name"):
        return None  # sentence-transformers would put the default prompt ahead of every text
    model_dir = root / modules[0].get("path", "")
    config = _json(model_dir / "config.json") or {}
    pooling = _json(root / modules[1].get("path", "") / "config.json") or {}
    st_config = _json(model_dir / "sentence_bert_config.json") or {}
    if (config.get("model_type") != "bert" or config.get("hidden_act") != "gelu"
            or config.get("position_embedding_type", "absolute") != "absolute"
            or _pooling_modes(pooling) != ["mean"]
            or pooling.get("word_embedding_dimension", pooling.get("embedding_dimension")) != config.get("hidden_size")
            or not isinstance(st_config.get("max_seq_length"), int)
            or set(st_config) - {"max_seq_length", "do_lower_case"}):  # other keys change tokenising
        return None
    if not (model_dir / "model.safetensors").is_file() or not (model_dir / "tokenizer.json").is_file():
        return None
    return model_dir, config, st_config


def _tokenizer(path: Path, max_length: int, lower: bool, pad_id: int) -> Tokenizer:
    """The tokenizer as sentence-transformers sets it up: truncated to max_seq_length (with [CLS] and
    [SEP] counted), padded to the longest text of the batch."""
    tokenizer = Tokenizer.from_file(str(path))
    normalizer = tokenizer.normalizer
    if lower and not (isinstance(normalizer, Lowercase)
                      or isinstance(normalizer, Sequence) and any(isinstance(n, Lowercase) for n in normalizer)):
        # What sentence-transformers does for do_lower_case: a Lowercase ahead of the normalizer.
        tokenizer.normalizer = Sequence([Lowercase()] + ([normalizer] if normalizer is not None else []))
    tokenizer.enable_truncation(max_length=max_length)
    # tokenizer.json may pin a fixed padding length; pad to the batch's longest text instead.
    tokenizer.enable_padding(pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id) or "[PAD]")
    return tokenizer


def _weights(path: Path, layers: int) -> dict[str, np.ndarray] | None:
    """The encoder's float32 arrays by BertModel name (no `bert.` prefix), or None if any is missing."""
    from safetensors.numpy import load_file

    raw = {name.removeprefix("bert."): array for name, array in load_file(str(path)).items()}
    needed = [f"embeddings.{n}.weight" for n in ("word_embeddings", "position_embeddings",
                                                  "token_type_embeddings", "LayerNorm")] + ["embeddings.LayerNorm.bias"]
    needed += [f"encoder.layer.{i}.{p}.{kind}"
               for i in range(layers) for p in _LAYER_PARAMS for kind in ("weight", "bias")]
    if any(name not in raw for name in needed):
        return None
    return {name: np.ascontiguousarray(raw[name], dtype=np.float32) for name in needed}


def _weights_digest(model_dir: Path, config: dict[str, Any], st_config: dict[str, Any]) -> str:
    """What the built graph depends on: the weights file's header (names, shapes, offsets), size and
    a sample of its bytes, the model's settings and this builder's version. Cheaper than hashing
    90 MB at every start, and a different file changes it."""
    weights = model_dir / "model.safetensors"
    digest = hashlib.sha256(f"{BUILDER_VERSION}|{OPSET}|{weights.stat().st_size}".encode())
    with open(weights, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        digest.update(handle.read(min(header_size, 1 << 24)))
        size = weights.stat().st_size
        for offset in range(0, size, max(1, size // 64)):  # 64 samples of 4 KB across the tensors
            handle.seek(offset)
            digest.update(handle.read(4096))
    digest.update(json.dumps([config, st_config], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def lean_model(location: str) -> OnnxBert | None:
    """An OnnxBert for the model directory at `location`, or None if it is not exactly a BERT encoder
    followed by mean pooling (and optionally Normalize)."""
    root = Path(location)
    settings = _bert_settings(root) if root.is_dir() else None
    if settings is None:
        return None
    model_dir, config, st_config = settings
    max_length = min(st_config["max_seq_length"], int(config.get("max_position_embeddings", 512)))
    tokenizer = _tokenizer(model_dir / "tokenizer.json", max_length, bool(st_config.get("do_lower_case")),
                           int(config.get("pad_token_id") or 0))
    graph = built_graph(model_dir, config, st_config)
    if graph is None:
        return None
    return OnnxBert(tokenizer, graph, config)


def built_graph(model_dir: Path, config: dict[str, Any], st_config: dict[str, Any]) -> Path | None:
    """The float32 ONNX graph of the model, built once and cached (None if the weights are incomplete)."""
    path = cache_dir() / "onnx" / f"bert-{_weights_digest(model_dir, config, st_config)}.onnx"
    if path.is_file():
        return path
    started = time.monotonic()
    weights = _weights(model_dir / "model.safetensors", int(config["num_hidden_layers"]))
    if weights is None:
        return None
    model = build_onnx(weights, config)
    from onnx.checker import check_model

    check_model(model)  # a graph that does not check is never cached
    write_atomically(path, model.SerializeToString())
    log.info("encoder graph built from %s in %.1fs: %s", model_dir, time.monotonic() - started, path)
    return path


def build_onnx(w: dict[str, np.ndarray], config: dict[str, Any]):
    """The forward pass as an ONNX model: (input_ids, attention_mask) int64 [batch, length] →
    sentence_embedding float32 [batch, hidden], mean-pooled over real tokens and of unit length."""
    from onnx import TensorProto, helper, numpy_helper

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = hidden // heads
    eps = float(config.get("layer_norm_eps", 1e-12))
    nodes: list[Any] = []
    initialisers: list[Any] = []

    def const(name: str, array: np.ndarray) -> str:
        initialisers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(x: str, name: str, out: str) -> str:
        # x @ W.T + b: the transposed weight is stored, so no Transpose runs per call.
        product = node("MatMul", [x, const(name + ".wT", w[name + ".weight"].T.copy())], out + ".mm")
        return node("Add", [product, const(name + ".b", w[name + ".bias"])], out)

    def layer_norm(x: str, name: str, out: str) -> str:
        return node("LayerNormalization", [x, const(name + ".g", w[name + ".weight"]),
                                           const(name + ".beta", w[name + ".bias"])], out, axis=-1, epsilon=eps)

    # Embeddings: word + position (the first `length` rows) + token type 0 (single sentences).
    length = node("Gather", [node("Shape", ["input_ids"], "shape"), const("one", np.array(1, dtype=np.int64))], "length")
    positions = node("Slice", [const("pos_table", w["embeddings.position_embeddings.weight"]),
                               const("zero_1d", np.array([0], dtype=np.int64)),
                               node("Unsqueeze", [length, const("axis0", np.array([0], dtype=np.int64))], "length_1d"),
                               const("axes0", np.array([0], dtype=np.int64))], "positions")
    words = node("Gather", [const("word_table", w["embeddings.word_embeddings.weight"]), "input_ids"], "words")
    typed = node("Add", [positions, const("type0", w["embeddings.token_type_embeddings.weight"][0])], "typed")
    x = layer_norm(node("Add", [words, typed], "embedded"), "embeddings.LayerNorm", "emb_out")

    # Padding keys take no attention: an additive bias of float32's lowest value, [batch, 1, 1, length].
    mask = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    keep = node("Unsqueeze", [mask, const("axes12", np.array([1, 2], dtype=np.int64))], "mask_4d")
    bias = node("Mul", [node("Sub", [const("one_f", np.array(1.0, dtype=np.float32)), keep], "pad_4d"),
                        const("lowest", np.array(np.finfo(np.float32).min, dtype=np.float32))], "attention_bias")
    split_shape = const("split_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    sqrt2 = const("sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
    half = const("half", np.array(0.5, dtype=np.float32))

    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."

        def heads_of(kind: str, perm: list[int]) -> str:
            projected = linear(x, p + f"attention.self.{kind}", f"l{i}.{kind}")
            return node("Transpose", [node("Reshape", [projected, split_shape], f"l{i}.{kind}.split")],
                        f"l{i}.{kind}.heads", perm=perm)

        q = heads_of("query", [0, 2, 1, 3])  # [batch, heads, length, head_dim]
        k = heads_of("key", [0, 2, 3, 1])  # [batch, heads, head_dim, length]
        v = heads_of("value", [0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k], f"l{i}.qk"), scale], f"l{i}.scaled"), bias],
                      f"l{i}.scores")
        probs = node("Softmax", [scores], f"l{i}.probs", axis=-1)
        context = node("Reshape", [node("Transpose", [node("MatMul", [probs, v], f"l{i}.ctx_heads")],
                                        f"l{i}.ctx_t", perm=[0, 2, 1, 3]), merge_shape], f"l{i}.ctx")
        attended = linear(context, p + "attention.output.dense", f"l{i}.attn_out")
        x = layer_norm(node("Add", [attended, x], f"l{i}.attn_res"), p + "attention.output.LayerNorm", f"l{i}.attn_ln")
        inner = linear(x, p + "intermediate.dense", f"l{i}.inner")
        # Exact (erf) GELU, as BERT's "gelu": 0.5·x·(1 + erf(x/√2)).
        erf = node("Erf", [node("Div", [inner, sqrt2], f"l{i}.gelu_div")], f"l{i}.gelu_erf")
        gelu = node("Mul", [node("Mul", [inner, node("Add", [erf, "one_f"], f"l{i}.gelu_add")], f"l{i}.gelu_mul"),
                            half], f"l{i}.gelu")
        out = linear(gelu, p + "output.dense", f"l{i}.out")
        x = layer_norm(node("Add", [out, x], f"l{i}.out_res"), p + "output.LayerNorm", f"l{i}.out_ln")

    # Mean over real tokens, then unit length (Pooling + Normalize, with their epsilons).
    token_weights = node("Unsqueeze", [mask, const("axis_last", np.array([-1], dtype=np.int64))], "mask_3d")
    summed = node("ReduceSum", [node("Mul", [x, token_weights], "masked"), "one_1d"], "summed", keepdims=0)
    const("one_1d", np.array([1], dtype=np.int64))
    counts = node("Clip", [node("ReduceSum", [token_weights, "one_1d"], "counts", keepdims=0),
                           const("count_eps", np.array(1e-9, dtype=np.float32))], "counts_clipped")
    pooled = node("Div", [summed, counts], "pooled")
    norm = node("Clip", [node("ReduceL2", [pooled], "norm", axes=[-1], keepdims=1),  # axes an attribute until opset 18
                         const("norm_eps", np.array(1e-12, dtype=np.float32))], "norm_clipped")
    node("Div", [pooled, norm], "sentence_embedding")

    graph = helper.make_graph(
        nodes, "mean_pooled_bert",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        initialisers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="synthstream")
    model.ir_version = 8  # what every onnxruntime of the last years reads
    return model


def _session(path: Path):
    """An ONNX Runtime session computing on the calling thread: the encoder runs calls side by side
    on its own threads, so each call's CPU is its thread's CPU (EncoderStats) and no runtime thread
    pool spins beside them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxBert:
    """Tokenizer + the BERT graph on ONNX Runtime, inference only; rows of unit length."""

    def __init__(self, tokenizer: Tokenizer, graph: Path, config: dict[str, Any]) -> None:
        self.tokenizer = tokenizer
        self.dimension = int(config["hidden_size"])
        self.graph = graph
        self.session = _session(graph)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask (1 = real token), int64, padded to the longest text."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def encode(self, texts: list[str], batch_size: int = 32, fast: bool = False) -> np.ndarray:
        """Unit-length float32 rows, one per text, in input order. `fast` is accepted for the
        encoder's API and gives the exact vectors: an int8 graph was measured 1.7x faster here but
        agreed with them at mean cosine 0.991 (minimum 0.973), short of what choosing needs."""
        session = self.session
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Longest first, as sentence-transformers does: texts of similar length share a batch, so
        # little of the work goes to padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, mask = self.tokenize([texts[i] for i in rows])
            vectors[rows] = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return vectors
