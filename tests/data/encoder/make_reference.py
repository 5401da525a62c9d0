"""Reference vectors for tests/test_encoder.py, computed once with sentence-transformers.

The suite compares the ONNX encoder with these committed vectors, so it needs no torch. Run this
again only to change the texts, in an environment with the `[torch]` extra:

    pip install -e '.[torch]'
    python tests/data/encoder/make_reference.py      # writes tests/data/encoder/reference.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

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
    "for (int i = 0; i < n; ++i) {\n    total += values[i] * weights[i];\n}",
    ">>> import json\n>>> json.dumps({'a': [1, 2, 3]}, indent=2)\n'{\\n  \"a\": [\\n    1,'",
    "E = mc^2, ∫ x² dx = x³/3 + C, and √2 ≈ 1.41421",
    "Café, naïve, résumé, jalapeño, Ångström, façade",
    "Straße, Übermensch, Öl, Ärger", "Привет, как дела? Это тест на кириллице.",
    "日本語のテキストも正しく処理されるべきです。", "北京是中国的首都。", "안녕하세요, 반갑습니다.",
    "مرحبا بالعالم", "שלום עולם", "Γειά σου Κόσμε, αυτό είναι ένα ελληνικό κείμενο.",
    "हिन्दी में लिखा गया एक छोटा वाक्य।", "Emoji test 😀🎉🚀 with some words 👍",
    "Mixed: the 3rd of May, 2024 at 10:30 a.m. (UTC+2) costs $1,234.56 or €1.000,00",
    "email@example.com https://example.org/path?query=1&b=2#frag",
    "!!!???...,,,;;;:::---___***", "«quotes» “curly” ‘single’ „German“",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "The quick brown fox jumps over the lazy dog. " * 3,
    ("A medium-length paragraph about machine learning: models learn patterns from data, and the "
     "quality of the data matters as much as the architecture of the model itself."),
    ("I run a small bakery and want to move our ordering from paper to a shared spreadsheet. Write a "
     "step-by-step plan, name the columns we need, and explain how two people can edit it safely."),
    LONG, LONG.upper(), "Ünïcödé " * 200, "word " * 600, ("x" * 150 + " ") * 20,
    "\u200bzero\u200bwidth\u200bspaces and combining e\u0301 accents",
]

OUT = Path(__file__).resolve().parent / "reference.npz"


def main() -> int:
    from sentence_transformers import SentenceTransformer

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from streamer.runtime.model_files import DEFAULT_MODEL, model_location

    location = model_location(DEFAULT_MODEL)
    model = SentenceTransformer(location, device="cpu")
    vectors = model.encode(TEXTS, batch_size=8, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False).astype(np.float32)
    features = model.preprocess(TEXTS)
    ids = features["input_ids"].numpy().astype(np.int32)
    mask = features["attention_mask"].numpy().astype(np.int8)
    np.savez_compressed(OUT, texts=np.array(TEXTS, dtype=object).astype(str), vectors=vectors,
                        input_ids=ids, attention_mask=mask)
    import sentence_transformers
    import torch
    print(f"{OUT}: {len(TEXTS)} texts, vectors {vectors.shape} from sentence-transformers "
          f"{sentence_transformers.__version__} (torch {torch.__version__}) on {location}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
