"""The ONNX encoder against sentence-transformers' vectors (committed: tests/data/encoder/), on the
real all-MiniLM-L6-v2 weights (no mocks, no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from streamer.runtime.bert import OnnxBert, lean_model
from streamer.runtime.embedding import DEFAULT_MODEL, Encoder, EncoderUnavailable, model_location

ROOT = Path(__file__).resolve().parent.parent
LOCATION = model_location(DEFAULT_MODEL)
REFERENCE = np.load(ROOT / "tests" / "data" / "encoder" / "reference.npz")
TEXTS = [str(t) for t in REFERENCE["texts"]]
LONG = max(TEXTS, key=len)


@pytest.fixture(scope="module")
def lean() -> OnnxBert:
    model = lean_model(LOCATION)
    assert model is not None, f"{LOCATION} should load with the ONNX encoder"
    return model


def test_onnx_vectors_match_sentence_transformers(lean):
    """The acceptance figures: mean cosine >= 0.998 and minimum >= 0.99 against sentence-transformers
    (in fact the same arithmetic: far closer)."""
    expected = REFERENCE["vectors"]
    assert len(TEXTS) >= 40 and lean.dimension == 384 and "" in TEXTS
    # The long texts must be truncated for the comparison to cover truncation.
    untruncated = Tokenizer.from_str(lean.tokenizer.to_str())
    untruncated.no_truncation()
    assert len(untruncated.encode(LONG).ids) > 256 and len(lean.tokenizer.encode(LONG).ids) == 256
    got = lean.encode(TEXTS, batch_size=8)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(got * expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.mean() >= 0.998 and cosines.min() >= 0.99
    assert cosines.min() >= 0.9999, [(TEXTS[i][:40], float(cosines[i])) for i in np.argsort(cosines)[:3]]
    # Tighter than the cosine: same arithmetic, so e.g. a tanh GELU (cosine 0.99999) would show here.
    assert np.abs(got - expected).max() < 1e-4
    # Input order, whatever the batch size (texts are sorted by length inside).
    assert np.allclose(lean.encode(TEXTS[::-1], batch_size=5), got[::-1], atol=1e-5)
    assert lean.encode([], batch_size=8).shape == (0, 384)


def test_fast_vectors_choose_like_the_exact_ones(lean):
    exact = lean.encode(TEXTS, batch_size=8)
    fast = lean.encode(TEXTS, batch_size=8, fast=True)
    assert fast.shape == exact.shape and np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(fast * exact, axis=1)
    assert cosines.mean() >= 0.998 and cosines.min() >= 0.99, (float(cosines.mean()), float(cosines.min()))
    # What they are for: the nearest of the others is the same text for (almost) every text.
    def nearest(v: np.ndarray) -> np.ndarray:
        similarity = v @ v.T
        np.fill_diagonal(similarity, -2)
        return similarity.argmax(1)
    assert np.mean(nearest(fast) == nearest(exact)) >= 0.95


def test_onnx_token_ids_are_those_of_sentence_transformers(lean):
    ids, mask = lean.tokenize(TEXTS)
    assert ids.tolist() == REFERENCE["input_ids"].tolist()
    assert mask.tolist() == REFERENCE["attention_mask"].tolist()


def _copy_with(tmp_path: Path, changes: dict[str, object]) -> Path:
    """The bundled model directory, files symlinked, with `changes` (relative path → JSON) written over it."""
    copy = tmp_path / "model"
    copy.mkdir(parents=True)
    for item in Path(LOCATION).iterdir():
        (copy / item.name).symlink_to(item, target_is_directory=item.is_dir())
    for name, content in changes.items():
        target = copy / name
        if target.parent.is_symlink():  # write into a real directory, never through to the original
            target.parent.unlink()
            target.parent.mkdir()
            for item in (Path(LOCATION) / target.parent.name).iterdir():
                (target.parent / item.name).symlink_to(item)
        if target.is_symlink():
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(content))
    return copy


def test_lean_model_declines_what_it_does_not_reproduce(tmp_path):
    assert lean_model(str(tmp_path / "missing")) is None
    assert lean_model(DEFAULT_MODEL) is None  # a hub name, not a directory
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    (roberta / "config.json").write_text(json.dumps({"model_type": "roberta", "hidden_size": 768}))
    assert lean_model(str(roberta)) is None

    modules = json.loads((Path(LOCATION) / "modules.json").read_text())
    dense = [*modules[:2], {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
             {**modules[2], "idx": 3, "name": "3"}]
    assert lean_model(str(_copy_with(tmp_path / "dense", {"modules.json": dense,
                                                          "2_Dense/config.json": {"in_features": 384}}))) is None
    cls = {"word_embedding_dimension": 384, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    assert lean_model(str(_copy_with(tmp_path / "cls", {"1_Pooling/config.json": cls}))) is None
    config = json.loads((Path(LOCATION) / "config.json").read_text())
    roberta_copy = _copy_with(tmp_path / "roberta-copy", {"config.json": {**config, "model_type": "roberta"}})
    assert lean_model(str(roberta_copy)) is None
    assert lean_model(str(_copy_with(tmp_path / "plain", {}))) is not None  # the copying itself is fine


def test_a_model_the_onnx_encoder_does_not_build_falls_back_or_names_the_extra(tmp_path, lean):
    # Max pooling: sentence-transformers loads it, the ONNX encoder does not.
    pooling = {"word_embedding_dimension": 384, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}
    encoder = Encoder(DEFAULT_MODEL)
    encoder.location = str(_copy_with(tmp_path, {"1_Pooling/config.json": pooling}))
    try:
        import sentence_transformers  # noqa: F401  (the [torch] extra)
    except ImportError:  # the default install: a clear error naming the extra, never a silent other model
        with pytest.raises(EncoderUnavailable, match=r"synthstream\[torch\]"):
            encoder.encode_sync(["a question about bread"])
        return
    vectors = encoder.encode_sync(["a question about bread", "another about trains"])
    assert type(encoder._load()).__name__ == "SentenceTransformer" and encoder.dimension == 384
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.sum(vectors[0] * lean.encode(["a question about bread"], batch_size=1)[0]) < 0.9999


def test_the_built_graph_is_cached_and_workers_starting_together_build_it_safely(tmp_path):
    """Four processes start on an empty cache at once: each gets the same vectors, one graph file
    is left (no temporary files), and a fifth process loads it without building."""
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
            "from streamer.runtime.embedding import Encoder; import numpy as np; "
            "v = Encoder().encode_sync(['How do I bake bread?', 'Trains in Japan']); "
            "print('VECTOR', np.round(v[0, :4], 5).tolist())")
    env = {**os.environ, "SYNTHSTREAM_CACHE_DIR": str(tmp_path)}
    if Path(LOCATION).parent.name == "models":
        # The weights were fetched into the usual cache: link them, so this test does not fetch again.
        (tmp_path / "models").mkdir()
        (tmp_path / "models" / Path(LOCATION).name).symlink_to(LOCATION, target_is_directory=True)
    started = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(4)]
    outputs = [p.communicate(timeout=180)[0] for p in started]
    assert all(p.returncode == 0 for p in started), outputs
    vectors = {line for out in outputs for line in out.splitlines() if line.startswith("VECTOR")}
    assert len(vectors) == 1, vectors
    graphs = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert len([g for g in graphs if g.endswith(".onnx") and not g.startswith(".")]) >= 1
    assert not [g for g in graphs if g.startswith(".")], graphs  # no half-written files left
    again = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True, capture_output=True,
                           timeout=120)
    assert again.returncode == 0 and "graph built" not in again.stdout and again.stdout.count("VECTOR") == 1
    assert again.stdout.splitlines()[-1] in vectors


def test_shared_encoder_imports_neither_torch_nor_transformers():
    code = ("import sys; from streamer.runtime.embedding import shared_encoder; "
            "e = shared_encoder(); v = e.encode_sync(['How do I bake bread?', 'Trains in Japan', '']); "
            "print(v.shape, e.dimension, "
            "sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(3, 384) 384 []", done.stdout


async def test_the_scheduler_gives_every_caller_its_own_vectors():
    """Many concurrent callers, exact and fast, one and several texts each: the scheduler gathers
    them into shared calls and must hand each caller exactly the rows of its own texts."""
    import asyncio

    from streamer.runtime.embedding import Encoder

    encoder = Encoder(LOCATION, gather_limit=7)  # small calls: many gathers, both workers busy
    requests = [([f"request {i} text {j} about {TEXTS[(i + j) % len(TEXTS)][:60]}" for j in range(1 + i % 3)],
                 i % 2 == 0) for i in range(40)]
    results = await asyncio.gather(*(encoder.encode(texts, fast=fast) for texts, fast in requests))
    for (texts, fast), got in zip(requests, results, strict=True):
        assert got.shape == (len(texts), 384)
        alone = encoder.encode_sync(texts, fast=fast)
        assert np.allclose(got, alone, atol=1e-5)
    assert encoder.stats.texts >= sum(len(t) for t, _ in requests) and encoder.stats.calls > 40 // 7
