"""Main text of an HTML page, with the standard library only: the FALLBACK of producers.extract.

Pages go through trafilatura (producers.extract); this plain-text extractor is used only for the
pages trafilatura returns nothing for (very short pages, markup it rejects), and the feed counts
them ("by the fallback extractor" in its summary).

The page is parsed into a small tree (html.parser is lenient and never needs a network or a
compiled dependency), boilerplate elements are dropped, and if the page marks its content with
<article> or <main> only that part is kept. Traversals are iterative so that badly nested pages
(thousands of unclosed tags) cannot hit the recursion limit.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["extract_main_text"]

# Boilerplate and non-text elements: their whole subtree is dropped.
DROPPED = frozenset({
    "script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside", "form",
    "iframe", "button",
})
# Not page text either; the <title> is returned on its own.
HIDDEN = frozenset({"head", "title", "meta", "link", "base", "object", "embed", "canvas", "math"})
# Elements whose boundaries are line breaks.
BLOCK = frozenset({
    "p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "br", "tr", "section", "pre", "blockquote",
    "ul", "ol", "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "caption", "article", "main",
    "body", "html", "figure", "figcaption", "hr", "address", "details", "summary", "fieldset",
    "legend", "center", "menu",
})
CELLS = frozenset({"td", "th"})  # cells of one row stay on one line, separated by a space
VOID = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr", "keygen",
})
PRESERVE_LINES = frozenset({"pre", "textarea"})

# HTML's optional end tags: a start tag of the key implicitly closes open elements of these kinds.
# Without this, pages with unclosed <p>/<li> would nest ever deeper.
_IMPLIED_CLOSE: dict[str, frozenset[str]] = {
    "li": frozenset({"li", "p"}),
    "dt": frozenset({"dt", "dd", "p"}),
    "dd": frozenset({"dt", "dd", "p"}),
    "tr": frozenset({"tr", "td", "th", "p"}),
    "td": frozenset({"td", "th", "p"}),
    "th": frozenset({"td", "th", "p"}),
    "option": frozenset({"option"}),
}
_CLOSES_P = frozenset({"p"})

_ANY_SPACE = re.compile(r"\s+")
_LINE_SPACE = re.compile(r"[^\S\n]+")


class _Node:
    __slots__ = ("tag", "children")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.children: list[_Node | str] = []


class _TreeBuilder(HTMLParser):
    """Builds a _Node tree; text is whitespace-collapsed as it arrives (except inside <pre>)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities decoded in handle_data
        self.root = _Node("#root")
        self._open: list[_Node] = [self.root]
        self._pre_depth = 0

    def parse_marked_section(self, i: int, report: int = 1) -> int:
        # _markupbase raises on unknown "<![name" sections; browsers skip them as bogus comments.
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            return self.parse_bogus_comment(i, report)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._close_implied(tag)
        node = _Node(tag)
        self._open[-1].children.append(node)
        if tag not in VOID:
            self._open.append(node)
            self._pre_depth += tag in PRESERVE_LINES

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/>, <path/>: never opens an element.
        self._open[-1].children.append(_Node(tag))

    def handle_endtag(self, tag: str) -> None:
        if tag == "br":  # browsers treat a stray </br> as <br>
            self._open[-1].children.append(_Node("br"))
            return
        for i in range(len(self._open) - 1, 0, -1):
            if self._open[i].tag == tag:
                self._pop_to(i)
                return
        # An end tag with no open element is ignored, as browsers do.

    def handle_data(self, data: str) -> None:
        text = _LINE_SPACE.sub(" ", data) if self._pre_depth else _ANY_SPACE.sub(" ", data)
        if text:
            self._open[-1].children.append(text)

    def _close_implied(self, tag: str) -> None:
        closes = _IMPLIED_CLOSE.get(tag) or (_CLOSES_P if tag in BLOCK else None)
        while closes and len(self._open) > 1 and self._open[-1].tag in closes:
            self._pop_to(len(self._open) - 1)

    def _pop_to(self, index: int) -> None:
        self._pre_depth -= sum(node.tag in PRESERVE_LINES for node in self._open[index:])
        del self._open[index:]


def _elements(root: _Node, skip: frozenset[str]) -> list[_Node]:
    """All elements under root in document order, without the subtrees of `skip` tags."""
    found: list[_Node] = []
    todo: list[_Node] = [root]
    while todo:
        node = todo.pop()
        if node.tag in skip:
            continue
        found.append(node)
        todo.extend(reversed([c for c in node.children if isinstance(c, _Node)]))
    return found


def _render(root: _Node) -> str:
    pieces: list[str] = []
    todo: list[_Node | str] = [root]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            pieces.append(item)
            continue
        if item.tag in DROPPED or item.tag in HIDDEN:
            continue
        sep = "\n" if item.tag in BLOCK else " " if item.tag in CELLS else ""
        if sep:
            pieces.append(sep)
            todo.append(sep)  # emitted after the children
        todo.extend(reversed(item.children))
    return _tidy("".join(pieces))


def _tidy(text: str) -> str:
    lines = (_LINE_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def _main_node(root: _Node) -> _Node:
    """The largest <article>, else the largest <main>, else <body>, else the whole document."""
    elements = _elements(root, DROPPED | HIDDEN)
    for tag in ("article", "main"):
        candidates = [node for node in elements if node.tag == tag]
        if candidates:
            return max(candidates, key=lambda node: len(_render(node)))
    return next((node for node in elements if node.tag == "body"), root)


def _title(root: _Node) -> str | None:
    for node in _elements(root, frozenset({"svg", "template"})):  # an <svg> can have its own <title>
        if node.tag == "title":
            title = _ANY_SPACE.sub(" ", "".join(c for c in node.children if isinstance(c, str))).strip()
            return title or None
    return None


def extract_main_text(html: str) -> tuple[str, str | None]:
    """(main text, title) of a page: blocks become lines, whitespace is collapsed."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return _render(_main_node(builder.root)), _title(builder.root)
