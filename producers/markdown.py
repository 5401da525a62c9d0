"""An HTML element's content as Markdown that keeps what the page says, for pages that name their
main content (`role="main"`, `<main>`): producers.extract uses it there instead of trafilatura,
whose content scoring drops what a reference page is made of (headings that are links, definition
terms, doctest blocks inside tables, ...).

- Headings: `#` to `######` and their whole text, links included (no inline marks).
- `<pre>`: fenced, verbatim (every space and blank line), with the language its classes name.
- Inline code: one line (the page's line breaks inside it are layout), in backticks.
- Definition lists: the term on its own line, a signature (`<dt class="sig …">`, or a term that is
  all code) in backticks, then its description; no list markers.
- Tables: a data table (header cells, or single-line cells) as a Markdown table with its separator
  row; a layout table (cells holding blocks: code, lists, paragraphs) as its cells' blocks in order.
- Lists as `- ` / `1. ` items, nested ones indented; quotes as `> `; links as their text; images,
  scripts, forms, hidden elements (a hidden tab panel is content) and furniture some sites keep in
  their main element (breadcrumbs, share buttons, related links: by class) left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lxml.html import HtmlElement

__all__ = ["to_markdown"]

_SKIP = frozenset({"script", "style", "noscript", "template", "nav", "form", "button", "input",
                   "select", "textarea", "svg", "img", "picture", "video", "audio", "iframe", "object",
                   "canvas", "map", "head", "title", "meta", "link"})
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCKS = frozenset({"p", "div", "section", "article", "main", "header", "footer", "figure", "figcaption",
                     "blockquote", "aside", "ul", "ol", "li", "dl", "dt", "dd", "table", "thead", "tbody", "tfoot",
                     "tr", "td", "th", "caption", "pre", "hr", "address", "details", "summary", "fieldset",
                     "legend", "center", "body", "html", *_HEADINGS})
_CODE = frozenset({"code", "tt", "kbd", "samp", "var"})
_FURNITURE = ("breadcrumb", "share", "sharing", "social", "cookie", "newsletter", "related", "comments")
_EMPHASIS = {"em": "*", "i": "*", "strong": "**", "b": "**"}
_SPACES = re.compile(r"\s+")
_BREAK = "\ue000"  # a <br> while inline text is gathered (private use: no page's text)
_BACKTICKS = re.compile(r"`+")
_LANGUAGE_CLASS = re.compile(r"^(?:highlight|language|lang)-([\w+#.-]+)$")
_NO_LANGUAGE = frozenset({"default", "none", "nohighlight", "plain", "plaintext", "text"})


def to_markdown(element: HtmlElement) -> str:
    """The Markdown text of `element`'s content (blocks separated by a blank line)."""
    return "\n\n".join(_blocks(element)).strip()


def _tag(element: HtmlElement) -> str:
    return element.tag.lower() if isinstance(element.tag, str) else ""


def _boilerplate(element: HtmlElement) -> bool:
    """Page furniture some sites keep inside their main element: breadcrumbs, share and social
    buttons, cookie banners, newsletter boxes, related links, comment threads, by their class (not
    their id: a section's id is its heading's slug)."""
    names = (element.get("class") or "").lower().replace("_", "-").split()
    return any(name.startswith(_FURNITURE) for name in names)


def _hidden(element: HtmlElement) -> bool:
    """Hidden and not content; a hidden tab panel is content (its tab shows it: the same command
    for another shell, say)."""
    if element.get("role") == "tabpanel":
        return False
    return (element.get("hidden") is not None or element.get("aria-hidden") == "true"
            or "display:none" in (element.get("style") or "").replace(" ", ""))


def _classes(element: HtmlElement) -> list[str]:
    return (element.get("class") or "").split()


# Inline text -----------------------------------------------------------------------------------------
def _inline(element: HtmlElement, marks: bool = True, skip_blocks: bool = True) -> str:
    """The inline text of `element` with spaces collapsed; `marks`: code in backticks, emphasis
    in asterisks."""
    pieces: list[str] = [element.text or ""]
    for child in element:
        tag = _tag(child)
        if tag and tag not in _SKIP and not _hidden(child) and not (skip_blocks and tag in _BLOCKS):
            pieces.append(_inline_child(child, tag, marks))
        elif tag == "br":
            pieces.append(_BREAK)
        pieces.append(child.tail or "")
    return "".join(pieces)


def _inline_child(child: HtmlElement, tag: str, marks: bool) -> str:
    if tag == "br":
        return _BREAK
    if tag in _CODE and marks:
        return _code_span(_SPACES.sub(" ", child.text_content()))
    inner = _inline(child, marks, skip_blocks=False)
    mark = _EMPHASIS.get(tag) if marks else None
    if mark and inner.strip():
        lead, core, trail = _split_spaces(inner)
        return f"{lead}{mark}{core}{mark}{trail}"
    return inner


def _split_spaces(text: str) -> tuple[str, str, str]:
    core = text.strip()
    start = text.find(core)
    return text[:start], core, text[start + len(core):]


def _code_span(code: str) -> str:
    if not code.strip():
        return code
    longest = max((len(run) for run in _BACKTICKS.findall(code)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if code.startswith("`") or code.endswith("`") else ""
    return f"{fence}{pad}{code}{pad}{fence}"


def _flat(text: str) -> str:
    """Inline text as lines: the page's line breaks are spaces (HTML), <br> breaks lines."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.split(_BREAK))
    return "\n".join(line for line in lines if line)


# Blocks ----------------------------------------------------------------------------------------------
def _blocks(element: HtmlElement) -> list[str]:
    """The blocks of `element`'s content, in order: runs of inline content become paragraphs."""
    blocks: list[str] = []
    run: list[str] = [element.text or ""]

    def end_run() -> None:
        text = _flat("".join(run))
        if text:
            blocks.append(text)
        run.clear()

    for child in element:
        tag = _tag(child)
        if not tag or tag in _SKIP or _hidden(child) or _boilerplate(child):
            pass
        elif tag in _BLOCKS:
            end_run()
            blocks.extend(_block(child, tag))
        else:
            run.append(_inline_child(child, tag, marks=True))
        run.append(child.tail or "")
    end_run()
    return blocks


def _block(element: HtmlElement, tag: str) -> list[str]:
    handler = _HANDLERS.get(tag)
    if handler is not None:
        return handler(element)
    if tag in _HEADINGS:
        text = _SPACES.sub(" ", _inline(element, marks=False, skip_blocks=False).replace(_BREAK, " ")).strip()
        return [f"{'#' * _HEADINGS[tag]} {text}"] if text else []
    return _blocks(element)


def _pre(element: HtmlElement) -> list[str]:
    code = element.text_content().strip("\n")
    if not code.strip():
        return []
    longest = max((len(run) for run in _BACKTICKS.findall(code)), default=2)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{code_language(element) or ''}\n{code}\n{fence}"]


def code_language(pre: HtmlElement) -> str | None:
    """The language named by the classes of a <pre>, its <code> child or two ancestors: Sphinx
    (highlight-python), highlight.js/Prism (language-python, lang-python), pandoc (sourceCode python)."""
    code = pre.find("code")
    elements = [pre, *([code] if code is not None else []), *list(pre.iterancestors())[:2]]
    for element in elements:
        classes = _classes(element)
        for index, name in enumerate(classes):
            match = _LANGUAGE_CLASS.match(name)
            language = match.group(1) if match else None
            if name == "sourceCode" and index + 1 < len(classes):
                language = classes[index + 1]
            if language and language.lower() not in _NO_LANGUAGE:
                return language.lower()
    return None


def _quote(element: HtmlElement) -> list[str]:
    inner = _blocks(element)
    return ["\n".join(f"> {line}" if line else ">" for line in "\n\n".join(inner).split("\n"))] if inner else []


def _list(element: HtmlElement) -> list[str]:
    ordered = _tag(element) == "ol"
    number = int(element.get("start") or 1) if (element.get("start") or "1").lstrip("-").isdigit() else 1
    items: list[str] = []
    for child in element:
        if _tag(child) != "li" or _hidden(child):
            if _tag(child) in ("ul", "ol"):  # a list nested without its <li>
                items.extend("  " + line if line else "" for line in "\n".join(_list(child)).split("\n"))
            continue
        marker = f"{number}. " if ordered else "- "
        number += 1
        body = "\n\n".join(_blocks(child))
        if not body:
            continue
        lines = body.split("\n")
        indent = " " * len(marker)
        items.append(marker + lines[0] + "".join(f"\n{indent}{line}" if line else "\n" for line in lines[1:]))
    return ["\n".join(items)] if items else []


def _definitions(element: HtmlElement) -> list[str]:
    blocks: list[str] = []
    for child in element:
        tag = _tag(child)
        if tag == "dt" and not _hidden(child):
            blocks.extend(_term(child))
        elif tag == "dd" and not _hidden(child):
            blocks.extend(_blocks(child))
        elif tag == "div":  # HTML allows <div> groups of dt/dd
            blocks.extend(_definitions(child))
    return blocks


def _term(dt: HtmlElement) -> list[str]:
    """A term whole: its text as on the page (signatures and all-code terms as code)."""
    text = _SPACES.sub(" ", dt.text_content()).strip()
    if not text:
        return []
    codes = [c for c in dt.iter() if _tag(c) in _CODE]
    is_code = any(name.startswith("sig") for name in _classes(dt)) or (
        codes and _SPACES.sub("", "".join(c.text_content() for c in codes)) == _SPACES.sub("", text))
    return [_code_span(text) if is_code else text]


def _table(element: HtmlElement) -> list[str]:
    rows = [row for row in element.iter("tr") if _owning_table(row) is element]
    caption = element.find("caption")
    blocks = _blocks(caption) if caption is not None else []
    if not rows:
        return blocks
    cells = [[cell for cell in row if _tag(cell) in ("td", "th")] for row in rows]
    if _is_layout(element, cells):
        for row in cells:
            for cell in row:
                blocks.extend(_blocks(cell))
        return blocks
    width = max(len(row) for row in cells)
    lines = []
    for index, row in enumerate(cells):
        texts = [_cell_text(cell) for cell in row] + [""] * (width - len(row))
        lines.append("| " + " | ".join(texts) + " |")
        if index == 0:
            lines.append("|" + " --- |" * width)
    return [*blocks, "\n".join(lines)]


def _owning_table(row: HtmlElement) -> HtmlElement | None:
    for ancestor in row.iterancestors():
        if _tag(ancestor) == "table":
            return ancestor
    return None


def _is_layout(table: HtmlElement, cells: list[list[HtmlElement]]) -> bool:
    """A table used for layout: one column, or cells holding blocks (code, lists, several
    paragraphs, tables)."""
    if max(len(row) for row in cells) < 2:
        return True
    for row in cells:
        for cell in row:
            if any(_tag(d) in ("pre", "ul", "ol", "dl", "table", "blockquote") for d in cell.iterdescendants()):
                return True
            if sum(1 for d in cell.iterdescendants() if _tag(d) == "p" or (_tag(d) == "div" and _holds_blocks(d))) > 1:
                return True
    return False


def _holds_blocks(div: HtmlElement) -> bool:
    """A <div> that is more than the wrapper of one paragraph (DocBook wraps a footnote's <p>)."""
    return not (len(div) == 1 and _tag(div[0]) == "p" and not (div.text or "").strip())


def _cell_text(cell: HtmlElement) -> str:
    return " ".join(" ".join(_blocks(cell)).split()).replace("|", "\\|")


def _skip(element: HtmlElement) -> list[str]:
    return []


_HANDLERS: dict[str, Callable[[HtmlElement], list[str]]] = {
    "pre": _pre, "blockquote": _quote, "ul": _list, "ol": _list, "dl": _definitions, "table": _table,
    "hr": _skip,
}
