"""A lean loader for BERT sentence-transformers models with mean pooling (all-MiniLM-L6-v2 and kin).

Importing sentence_transformers (and with it transformers) costs seconds of CPU and 150+ MB at the
start of every process that encodes. A BERT encoder with mean pooling needs none of it: the
tokenizer is `tokenizers`, the weights are one safetensors file, and the forward pass is a few
dozen lines of torch. `lean_model` answers None for anything it does not reproduce exactly, and
the caller then falls back to SentenceTransformer.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from tokenizers.normalizers import Lowercase, Sequence

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


def _weights(path: Path, layers: int) -> dict[str, torch.Tensor] | None:
    """The encoder's tensors by BertModel name (no `bert.` prefix), query/key/value fused into `qkv`."""
    raw = {name.removeprefix("bert."): tensor for name, tensor in load_file(str(path)).items()}
    needed = [f"embeddings.{n}.weight" for n in ("word_embeddings", "position_embeddings",
                                                  "token_type_embeddings", "LayerNorm")] + ["embeddings.LayerNorm.bias"]
    needed += [f"encoder.layer.{i}.{p}.{kind}"
               for i in range(layers) for p in _LAYER_PARAMS for kind in ("weight", "bias")]
    if any(name not in raw for name in needed):
        return None
    weights = {name: raw[name].float() for name in needed}
    for i in range(layers):
        # One matmul for query, key and value instead of three.
        attention = f"encoder.layer.{i}.attention.self."
        for kind in ("weight", "bias"):
            parts = [weights.pop(f"{attention}{part}.{kind}") for part in ("query", "key", "value")]
            weights[f"{attention}qkv.{kind}"] = torch.cat(parts)
    return weights


def lean_model(location: str) -> LeanBert | None:
    """A LeanBert for the model directory at `location`, or None if it is not exactly a BERT encoder
    followed by mean pooling (and optionally Normalize)."""
    root = Path(location)
    settings = _bert_settings(root) if root.is_dir() else None
    if settings is None:
        return None
    model_dir, config, st_config = settings
    weights = _weights(model_dir / "model.safetensors", int(config["num_hidden_layers"]))
    if weights is None:
        return None
    max_length = min(st_config["max_seq_length"], int(config.get("max_position_embeddings", 512)))
    tokenizer = _tokenizer(model_dir / "tokenizer.json", max_length, bool(st_config.get("do_lower_case")),
                           int(config.get("pad_token_id") or 0))
    return LeanBert(tokenizer, weights, config)


class LeanBert:
    """BERT forward pass + mean pooling + L2 normalisation, inference only."""

    def __init__(self, tokenizer: Tokenizer, weights: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        self.tokenizer = tokenizer
        self.dimension = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.w = weights
        self._fast: dict[str, torch.Tensor] | None = None  # bfloat16 layer weights, made on first use
        self._fast_lock = threading.Lock()

    def fast_weights(self) -> dict[str, torch.Tensor] | None:
        """bfloat16 copies of the layer weights if this CPU multiplies them faster than float32
        (measured once: CPUs with native bfloat16 take about half the time; others emulate it
        and are slower), else None."""
        with self._fast_lock:
            if self._fast is None:
                self._fast = {}
                if _bfloat16_is_faster():
                    self._fast = {k: (v.to(torch.bfloat16) if k.startswith("encoder.") else v) for k, v in self.w.items()}
            return self._fast or None

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (1 = real token), padded to the longest text."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor(np.array([e.ids for e in encodings], dtype=np.int64))
        mask = torch.tensor(np.array([e.attention_mask for e in encodings], dtype=np.int64))
        return ids, mask

    def encode(self, texts: list[str], batch_size: int = 32, fast: bool = False) -> np.ndarray:
        """Unit-length float32 rows, one per text, in input order. `fast`: the layers in bfloat16
        where that is faster (cosine to the exact vectors ~0.999; for choosing, not for storing)."""
        weights = (self.fast_weights() if fast else None) or self.w
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Longest first, as sentence-transformers does: texts of similar length share a batch, so
        # little of the work goes to padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                vectors[rows] = self._embed(*self.tokenize([texts[i] for i in rows]), weights).numpy()
        return vectors

    def _embed(self, ids: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = (w["embeddings.word_embeddings.weight"][ids]
                  + w["embeddings.token_type_embeddings.weight"][0]  # single sentences: all type 0
                  + w["embeddings.position_embeddings.weight"][:ids.shape[1]])
        hidden = self._norm(hidden, "embeddings.LayerNorm", w)
        hidden = hidden.to(w["encoder.layer.0.intermediate.dense.weight"].dtype)
        # Padding keys take no attention: [batch, 1 (heads), 1 (queries), keys].
        attend = mask.bool()[:, None, None, :]
        for i in range(self.layers):
            hidden = self._layer(hidden, attend, f"encoder.layer.{i}.", w)
        hidden = hidden.float()
        # Mean over real tokens, then unit length (Pooling + Normalize).
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)

    def _layer(self, hidden: torch.Tensor, attend: torch.Tensor, prefix: str, w: dict[str, torch.Tensor]
               ) -> torch.Tensor:
        batch, length, width = hidden.shape
        qkv = _linear(hidden, w, prefix + "attention.self.qkv")
        # [batch, length, 3, heads, head_dim] → three [batch, heads, length, head_dim]
        q, k, v = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        context = context.transpose(1, 2).reshape(batch, length, width)
        hidden = self._norm(_linear(context, w, prefix + "attention.output.dense") + hidden,
                            prefix + "attention.output.LayerNorm", w)
        inner = F.gelu(_linear(hidden, w, prefix + "intermediate.dense"))  # exact (erf) GELU, as "gelu"
        return self._norm(_linear(inner, w, prefix + "output.dense") + hidden, prefix + "output.LayerNorm", w)

    def _norm(self, x: torch.Tensor, name: str, w: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(x, (self.dimension,), w[name + ".weight"], w[name + ".bias"], self.eps)


def _linear(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.linear(x, w[name + ".weight"], w[name + ".bias"])


def _bfloat16_is_faster() -> bool:
    """Time one layer-sized matrix product in each type (a few milliseconds, once per process)."""
    def best(dtype: torch.dtype) -> float:
        x, w = torch.randn(512, 384, dtype=dtype), torch.randn(1536, 384, dtype=dtype)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            F.linear(x, w)
            times.append(time.perf_counter() - started)
        return min(times)

    with torch.inference_mode():
        return best(torch.bfloat16) < 0.8 * best(torch.float32)
