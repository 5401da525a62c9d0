"""How a command's failure ends: the one place mapping exceptions to a one-line message and an exit code.

Exception classes are named as "module:attribute" and imported only while an exception is being
handled (and only until one matches), so `synthstream --help` imports none of the Kafka, LLM or
storage modules.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable


class CommandError(Exception):
    """A failure the command has already put into words: `synthstream: <message>`, exit `code`."""

    code = 1

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(CommandError):
    """The command line asks for something that cannot be done (a bad value, a missing setting): exit 2."""

    code = 2


@dataclass(frozen=True)
class Failure:
    """Exceptions of these classes end the command with `code` and, unless `template` is None,
    `synthstream: <template>` on stderr ({exc} is the exception)."""

    classes: tuple[str, ...]  # "module:attribute"; the attribute may be a class or a tuple of classes
    code: int | None  # None: the exception's own `code`
    template: str | None = "{exc}"

    def matches(self, exc: BaseException) -> bool:
        return any(isinstance(exc, _resolve(name)) for name in self.classes)


FAILURES: tuple[Failure, ...] = (
    Failure(("streamer.config:ConfigError",), 2, "configuration error: {exc}"),
    Failure(("builtins:KeyboardInterrupt",), 130, None),
    Failure(("streamer.cli.errors:CommandError",), None),
    Failure(("aiokafka.errors:KafkaConnectionError", "streamer.kafka.broker:BrokerError"), 1,
            "Kafka unavailable: {exc}"),
    Failure(("streamer.kafka.health:BROKER_VERDICTS",), 1),
    Failure(("streamer.state.manager:StateLockedError", "streamer.metrics.endpoint:MetricsServerError",
             "streamer.storage.sink:StoreConflictError", "streamer.kafka.clients:TopicPartitionsError",
             "producers.near_duplicates:NearDuplicatesBusyError"), 1),
    Failure(("streamer.llm.client:LLMError",), 1, "LLM endpoint failed: {exc}"),
    Failure(("streamer.runtime.model_files:ModelFilesError", "streamer.runtime.embedding:EncoderUnavailable"), 1,
            "encoder: {exc}"),
    Failure(("streamer.storage.export:EmptyExportError",), 1),
)


def _resolve(name: str) -> type | tuple[type, ...]:
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)


def exit_code(exc: BaseException) -> int | None:
    """Say what went wrong in one line and give the exit code; None for a failure nobody foresaw."""
    for failure in FAILURES:
        if failure.matches(exc):
            if failure.template is not None:
                print(f"synthstream: {failure.template.format(exc=exc)}", file=sys.stderr)
            return failure.code if failure.code is not None else getattr(exc, "code", 1)
    return None


def run_handler(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """The handler's exit code; a foreseen failure as one line instead of a traceback."""
    try:
        return int(handler(args) or 0)
    except BrokenPipeError:
        # `synthstream … | head`: the reader has seen enough. Point stdout at /dev/null so the
        # interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - unforeseen ones are raised again
        code = exit_code(exc)
        if code is None:
            raise
        return code
