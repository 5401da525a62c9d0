"""`synthstream encoder prepare`: fetch the encoder's weights and build its graph now, not at first use."""

from __future__ import annotations

import argparse
import time

from streamer.cli.base import Subparsers


def register(sub: Subparsers) -> None:
    s = sub.add_parser("encoder", help="the sentence encoder's files (weights, built ONNX graph)")
    actions = s.add_subparsers(dest="action", required=True)
    prepare = actions.add_parser(
        "prepare", help="fetch the weights and build the ONNX graph into the cache (e.g. while building an image)")
    prepare.add_argument("--model", default=None, help="encoder model (default: all-MiniLM-L6-v2)")
    prepare.set_defaults(handler=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from streamer.runtime.embedding import DEFAULT_MODEL, Encoder

    started = time.monotonic()
    encoder = Encoder(args.model or DEFAULT_MODEL)
    vectors = encoder.encode_sync(["a first sentence to check the encoder with"])
    model = encoder._load()  # noqa: SLF001 - the loaded model says where its graph is
    graph = getattr(model, "graph", None)
    print(f"encoder {encoder.name}: weights in {encoder.location}")
    print(f"  {'ONNX graph ' + str(graph) if graph else 'loaded with sentence-transformers'}; "
          f"{vectors.shape[1]} dimensions; ready in {time.monotonic() - started:.1f}s")
    return 0
