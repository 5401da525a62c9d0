"""The lean BERT loader against sentence-transformers, on the real all-MiniLM-L6-v2 (no mocks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from streamer.runtime.bert import LeanBert, lean_model
from streamer.runtime.embedding import DEFAULT_MODEL, Encoder, model_location

ROOT = Path(__file__).resolve().parent.parent
LOCATION = model_location(DEFAULT_MODEL)

LONG = " ".join(f"Sentence number {i} talks about sourdough, rye and the slow rise of dough." for i in range(60))
TEXTS = [
    "", "a", "Hi!", "OK", "...", "?!", "    leading and trailing spaces    ", "tab\tseparated\ttext",
    "line one\nline two\r\nline three",
    "How do I bake sourdough bread at home?", "HOW DO I BAKE SOURDOUGH BREAD AT HOME?",
    "hOw Do I bAkE sOuRdOuGh BrEaD aT hOmE?",
    "What is the capital of France?", "Explain quantum entanglement to a ten-year-old.",
    "Write a haiku about autumn leaves falling on a quiet pond.",
    "def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "E = mc^2, ∫ x² dx = x³/3 + C, and √2 ≈ 1.41421",
    "Café, naïve, résumé, jalapeño, Ångström, façade",
    "Straße, Übermensch, Öl, Ärger", "Привет, как дела? Это тест на кириллице.",
    "日本語のテキストも正しく処理されるべきです。", "北京是中国的首都。", "안녕하세요, 반갑습니다.",
    "مرحبا بالعالم", "שלום עולם", "Emoji test 😀🎉🚀 with some words 👍",
    "Mixed: the 3rd of May, 2024 at 10:30 a.m. (UTC+2) costs $1,234.56 or €1.000,00",
    "email@example.com https://example.org/path?query=1&b=2#frag",
    "!!!???...,,,;;;:::---___***", "«quotes» “curly” ‘single’ „German“",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "The quick brown fox jumps over the lazy dog. " * 3,
    ("A medium-length paragraph about machine learning: models learn patterns from data, and the "
     "quality of the data matters as much as the architecture of the model itself."),
    LONG, LONG.upper(), "Ünïcödé " * 200, "word " * 600, ("x" * 150 + " ") * 20,
    "\u200bzero\u200bwidth\u200bspaces and combining e\u0301 accents",
]


@pytest.fixture(scope="module")
def lean() -> LeanBert:
    model = lean_model(LOCATION)
    assert model is not None, f"{LOCATION} should load with the lean loader"
    return model


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(LOCATION, device="cpu")


def test_lean_vectors_match_sentence_transformers(lean, reference):
    assert len(TEXTS) >= 40 and lean.dimension == 384
    # The long texts must be truncated for the comparison to cover truncation.
    untruncated = Tokenizer.from_str(lean.tokenizer.to_str())
    untruncated.no_truncation()
    assert len(untruncated.encode(LONG).ids) > 256 and len(lean.tokenizer.encode(LONG).ids) == 256
    expected = reference.encode(TEXTS, batch_size=8, normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)
    got = lean.encode(TEXTS, batch_size=8)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(got * expected, axis=1) / np.linalg.norm(expected, axis=1)
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
    assert cosines.min() >= 0.999, float(cosines.min())
    # What they are for: the nearest of the others is the same text for (almost) every text.
    def nearest(v: np.ndarray) -> np.ndarray:
        similarity = v @ v.T
        np.fill_diagonal(similarity, -2)
        return similarity.argmax(1)
    assert np.mean(nearest(fast) == nearest(exact)) >= 0.95
    # On a CPU without fast bfloat16 there is nothing faster to do: fast is then exact.
    if lean.fast_weights() is None:
        assert np.array_equal(fast, exact)
    else:
        assert not np.array_equal(fast, exact)


def test_lean_token_ids_are_those_of_sentence_transformers(lean, reference):
    expected = reference.preprocess(TEXTS)
    ids, mask = lean.tokenize(TEXTS)
    assert ids.tolist() == expected["input_ids"].tolist()
    assert mask.tolist() == expected["attention_mask"].tolist()


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


def test_encoder_falls_back_to_sentence_transformers(tmp_path, lean):
    # Max pooling: sentence-transformers loads it, the lean loader does not.
    pooling = {"word_embedding_dimension": 384, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}
    encoder = Encoder(DEFAULT_MODEL)
    encoder.location = str(_copy_with(tmp_path, {"1_Pooling/config.json": pooling}))
    vectors = encoder.encode_sync(["a question about bread", "another about trains"])
    assert type(encoder._load()).__name__ == "SentenceTransformer" and encoder.dimension == 384
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.sum(vectors[0] * lean.encode(["a question about bread"], batch_size=1)[0]) < 0.9999


def test_shared_encoder_does_not_import_transformers():
    code = ("import sys; from streamer.runtime.embedding import shared_encoder; "
            "e = shared_encoder(); v = e.encode_sync(['How do I bake bread?', 'Trains in Japan', '']); "
            "print(v.shape, e.dimension, "
            "sorted(m for m in ('transformers', 'sentence_transformers') if m in sys.modules))")
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
        if fast:  # bfloat16 sums depend a little on what shares the batch (padding)
            assert (np.sum(got * alone, axis=1) > 0.999).all()
        else:
            assert np.allclose(got, alone, atol=1e-5)
    assert encoder.stats.texts >= sum(len(t) for t, _ in requests) and encoder.stats.calls > 40 // 7
