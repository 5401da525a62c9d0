"""Long documents in parts, cut by sections: at headings first, then between paragraphs, never
inside a code block, a table or a paragraph when the part can end before it.

A document (Markdown, as the feed writes it) is read as blocks: headings, fenced code blocks,
tables, and paragraphs (text between blank lines). Blocks are packed into parts of at most `limit`
characters; when the next block does not fit, the part ends at its last heading if that keeps at
least half of it, else before that block, and a part never ends on a heading. Each part after the
first starts with its heading path ("Page title › Section › Subsection": the headings it sits
under), so that it can be read on its own. A block longer than a part is cut too: code between
lines (the fence closed and opened again with its language), a table between rows (its header
repeated), a paragraph at a sentence end, else between words. After the cut a part shorter than
`min_chars` (its own text, without the path) is merged into the part before it (the first one into
the next), so the minimum size holds for every part that is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["split_sections", "split_text"]

_FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
PATH_SEPARATOR = " › "
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
SENTENCE_END = re.compile(r"[.!?…。！？][\"'”’)]*\s+")
WHITESPACE = re.compile(r"\s+")

Kind = Literal["heading", "code", "table", "text"]


@dataclass(frozen=True)
class Block:
    kind: Kind
    text: str
    level: int = 0  # a heading's level
    title: str = ""  # a heading's text


def blocks_of(text: str) -> list[Block]:
    """The blocks of a Markdown text, in order."""
    blocks: list[Block] = []
    lines = text.split("\n")
    run: list[str] = []
    run_kind: Kind = "text"

    def end_run() -> None:
        nonlocal run_kind
        if any(line.strip() for line in run):
            blocks.append(Block(run_kind, "\n".join(run).strip("\n")))
        run.clear()
        run_kind = "text"

    index = 0
    while index < len(lines):
        line = lines[index]
        fence = _FENCE.match(line)
        heading = _HEADING.match(line)
        if fence:
            end_run()
            marker = fence.group(2)
            end = index + 1
            while end < len(lines):
                stripped = lines[end].strip()
                if stripped.startswith(marker) and not stripped.strip(marker[0]):
                    break
                end += 1
            blocks.append(Block("code", "\n".join(lines[index:end + 1])))
            index = end + 1
            continue
        if heading:
            end_run()
            blocks.append(Block("heading", line, len(heading.group(1)), heading.group(2).strip()))
        elif not line.strip():
            end_run()
        else:
            is_row = line.lstrip().startswith("|")
            if run and (run_kind == "table") != is_row:
                end_run()
            run_kind = "table" if is_row else "text"
            run.append(line)
        index += 1
    end_run()
    return blocks


def _join(blocks: list[Block]) -> str:
    return "\n\n".join(block.text for block in blocks)


def _size(blocks: list[Block]) -> int:
    return sum(len(block.text) for block in blocks) + 2 * max(0, len(blocks) - 1)


# Blocks longer than a part ---------------------------------------------------------------------
def _cut_block(block: Block, limit: int) -> list[Block]:
    if len(block.text) <= limit:
        return [block]
    if block.kind == "code":
        return _cut_code(block, limit)
    if block.kind == "table":
        return _cut_table(block, limit)
    return [Block(block.kind, piece) for piece in split_text(block.text, limit)]


def _cut_lines(head: list[str], body: list[str], tail: list[str], limit: int) -> list[list[str]]:
    """`body` lines in chunks, each wrapped in `head` and `tail`, within `limit` when possible."""
    room = max(1, limit - sum(len(line) + 1 for line in head + tail))
    chunks: list[list[str]] = []
    chunk: list[str] = []
    size = 0
    for line in body:
        if chunk and size + len(line) + 1 > room:
            chunks.append(head + chunk + tail)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        chunks.append(head + chunk + tail)
    return chunks


def _cut_code(block: Block, limit: int) -> list[Block]:
    lines = block.text.split("\n")
    opening = _FENCE.match(lines[0])
    closing = lines[-1] if len(lines) > 1 and lines[-1].strip().startswith(opening.group(2)) else None  # type: ignore[union-attr]
    body = lines[1:-1] if closing is not None else lines[1:]
    close = closing if closing is not None else f"{opening.group(1)}{opening.group(2)}"  # type: ignore[union-attr]
    return [Block("code", "\n".join(chunk)) for chunk in _cut_lines([lines[0]], body, [close], limit)]


def _cut_table(block: Block, limit: int) -> list[Block]:
    lines = block.text.split("\n")
    head = lines[:2] if len(lines) > 2 and set(lines[1].replace("|", "").split()) <= {"---", ":---", "---:", ":---:"} \
        else lines[:1]
    return [Block("table", "\n".join(chunk)) for chunk in _cut_lines(head, lines[len(head):], [], limit)]


# Packing ----------------------------------------------------------------------------------------
@dataclass
class _Part:
    path: list[str]
    blocks: list[Block]

    def text(self) -> str:
        body = _join(self.blocks)
        return f"{PATH_SEPARATOR.join(self.path)}\n\n{body}" if self.path else body


def _path_line_size(path: list[str]) -> int:
    return len(PATH_SEPARATOR.join(path)) + 2 if path else 0


def split_sections(text: str, limit: int, *, title: str | None = None, min_chars: int = 0) -> list[str]:
    """`text` in parts of at most `limit` characters (a merged tiny tail may add to its neighbour),
    each after the first opening with its heading path; `title` leads the path when the text has
    no level-1 heading of its own."""
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    blocks = blocks_of(text)
    # the headings each block sits under (a heading: those above its level)
    stack: list[tuple[int, str]] = []
    ancestors: list[list[str]] = []
    for block in blocks:
        if block.kind == "heading":
            stack = [entry for entry in stack if entry[0] < block.level]
            ancestors.append([name for _, name in stack])
            stack.append((block.level, block.title))
        else:
            ancestors.append([name for _, name in stack])
    has_title = any(block.kind == "heading" and block.level == 1 for block in blocks)

    def path_of(index: int) -> list[str]:
        path = ancestors[index]
        if title and not has_title and (not path or path[0] != title):
            path = [title, *path]
        return path

    parts: list[_Part] = []
    current = _Part([], [])
    for index, block in enumerate(blocks):
        full = _path_line_size(current.path) + _size(current.blocks) + 2 + len(block.text) > limit
        if full and any(b.kind != "heading" for b in current.blocks):  # headings alone stay with what follows
            carried = _carry(current, limit)
            parts.append(current)
            start = index - len(carried)
            current = _Part(path_of(start), carried)
        room = limit - _path_line_size(current.path) - (_size(current.blocks) + 2 if current.blocks else 0)
        # (a piece of a cut block may start a part of its own: at least half a part, and never nothing)
        pieces = _cut_block(block, max(room, (limit - _path_line_size(current.path)) // 2, 64)) \
            if len(block.text) > room else [block]
        for n, piece in enumerate(pieces):
            if n:
                parts.append(current)
                current = _Part(path_of(index), [])
            current.blocks.append(piece)
    if current.blocks:
        parts.append(current)
    parts = _merged_tiny(parts, min_chars)
    return [part.text() for part in parts]


def _carry(part: _Part, limit: int) -> list[Block]:
    """Blocks moved from the end of a full part to the next one: from its last heading on when
    that keeps at least half of it; at least a trailing heading (a part never ends on one)."""
    blocks = part.blocks
    carried: list[Block] = []
    for cut in range(len(blocks) - 1, 0, -1):
        if blocks[cut].kind == "heading":
            if _size(blocks[:cut]) >= limit // 2:
                carried = blocks[cut:]
                del blocks[cut:]
            break
    while len(blocks) > 1 and blocks[-1].kind == "heading":
        carried.insert(0, blocks.pop())
    return carried


def _merged_tiny(parts: list[_Part], min_chars: int) -> list[_Part]:
    """Parts whose own text is shorter than `min_chars` joined to their neighbour."""
    merged: list[_Part] = []
    for part in parts:
        if merged and _size(part.blocks) < min_chars:
            merged[-1].blocks.extend(part.blocks)
        elif merged and _size(merged[-1].blocks) < min_chars:
            merged[-1].blocks.extend(part.blocks)
        else:
            merged.append(part)
    return merged


# Plain text ---------------------------------------------------------------------------------------
def _cut_position(text: str, limit: int) -> int:
    """Where to end the next piece (≤ limit): the last paragraph break, else the last sentence
    end, else the last whitespace, else the limit itself."""
    window = text[:limit + 1]
    breaks = [m.start() for m in PARAGRAPH_BREAK.finditer(window) if m.start() > 0]
    if breaks:
        return breaks[-1]
    for pattern in (SENTENCE_END, WHITESPACE):
        ends = [m.end() for m in pattern.finditer(window) if 0 < m.end() <= limit]
        if ends:
            return ends[-1]
    return limit


def split_text(text: str, limit: int) -> list[str]:
    """`text` in pieces of at most `limit` characters, cut at paragraph breaks, else sentence
    ends, else between words; only the whitespace at each cut is lost."""
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = _cut_position(rest, limit)
        part = rest[:cut].rstrip()
        if part:
            parts.append(part)
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts
