"""What a feed of documents or seeds did: the summary line it prints and its `--report` JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import orjson

from producers.items import BadInput

MAX_LISTED_REASONS = 6  # skip reasons named in the summary line; the --report JSON has them all


@dataclass
class FeedReport:
    topic: str
    sent: int = 0
    duplicates: int = 0
    finished: int = 0  # already ended in the store: not sent again
    bad: list[BadInput] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> inputs that are not documents
    extraction: Counter[str] = field(default_factory=Counter)  # HTML pages: "main" or "fallback" -> count
    rejected: Counter[str] = field(default_factory=Counter)  # filter name -> documents sent to `rejected`
    split: int = 0  # long documents sent as several parts (each part counts in `sent`)
    truncated: int = 0  # long documents sent as their first part only
    ids: list[str] = field(default_factory=list)
    read: int = 0  # inputs read (a split document's parts count once here, each in `sent`)

    def summary(self) -> str:
        text = (f"fed {self.sent} records to {self.topic}; {self.duplicates} exact duplicates collapsed; "
                f"{len(self.bad)} bad inputs skipped")
        if self.skipped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common(MAX_LISTED_REASONS))
            more = ", ..." if len(self.skipped) > MAX_LISTED_REASONS else ""
            text += f"; {self.skipped.total()} non-document records skipped ({reasons}{more})"
        if self.extraction:
            text += (f"; {self.extraction.total()} HTML pages extracted, {self.extraction['fallback']} of them "
                     f"by the fallback extractor")
        if self.rejected:
            filters = ", ".join(f"{name}: {n}" for name, n in self.rejected.most_common())
            text += f"; {self.rejected.total()} documents rejected by the filters ({filters})"
        if self.split or self.truncated:
            text += f"; {self.split} long documents split into parts, {self.truncated} truncated"
        if self.finished:
            text += f"; {self.finished} already finished in the store not sent again (--no-resume sends them)"
        return text

    def to_json(self) -> bytes:
        return orjson.dumps({"topic": self.topic, "sent": self.sent, "duplicates": self.duplicates,
                             "finished": self.finished,
                             "bad": [{"location": b.location, "reason": b.reason} for b in self.bad],
                             "skipped": dict(self.skipped.most_common()),
                             "extraction": {"main": self.extraction["main"],
                                            "fallback": self.extraction["fallback"]},
                             "rejected": dict(self.rejected.most_common()),
                             "split": self.split, "truncated": self.truncated},
                            option=orjson.OPT_INDENT_2)
