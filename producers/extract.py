"""The main content of a web page as Markdown-ish text, with its title, URL, date and language.

- Before: ARIA landmarks that are never content (navigation, search, banner, contentinfo,
  complementary) and <nav> are removed, and so are permalink anchors ("¶" after headings).
- A page that names its main content (`role="main"`, else one `<main>`) is trusted: that element is
  written out whole by `producers.markdown` (every heading, term, code block and character of it).
- Other pages: trafilatura (precision mode) judges which text is content, producers.main_element
  finds the element holding that text (navigation blocks by tag, class and link density left
  out, and inside it the blocks trafilatura judged boilerplate) and producers.markdown writes it
  out; trafilatura's own Markdown only where that finds
  no text. For trafilatura, links inside headings are unwrapped first (its link-density rule drops them otherwise: FAQ questions), and so are line
  breaks inside inline code (it makes a fenced block of them mid-sentence). Its <pre> handling
  re-flows code, so each <pre> is swapped for a marker plus its text before extraction and put
  back verbatim afterwards, fenced with ``` and the language the page names.
- Fallback: a page neither finds any text in goes through the hand-written `producers.html_text`,
  and the result says so (`fallback`), for the feed to count.
- Dates: only what the page's <head> declares (meta tags, JSON-LD there) or its URL says; never
  a date from its text.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from typing import Any

import trafilatura
from lxml import etree
from lxml import html as lxml_html
from lxml.html import HtmlElement
from htmldate import find_date
from trafilatura.metadata import examine_meta, extract_meta_json, extract_title, extract_url
from trafilatura.utils import decode_file, load_html

from producers.html_text import extract_main_text
from producers.main_element import main_element
from producers.markdown import code_language, to_markdown

__all__ = ["Extracted", "extract"]

# trafilatura logs every page it gives up on (as WARNING/ERROR); the feed counts those itself.
logging.getLogger("trafilatura").setLevel(logging.CRITICAL)

_NOT_CONTENT = etree.XPath(
    "//nav | //*[@role='navigation' or @role='search' or @role='banner' or @role='contentinfo'"
    " or @role='complementary']")
_PERMALINKS = etree.XPath(
    "//a[contains(concat(' ', normalize-space(@class), ' '), ' headerlink ')"
    " or (starts-with(@href, '#') and (normalize-space(.) = '¶' or normalize-space(.) = '§'))]")
_DECLARED_MAIN = etree.XPath("//*[@role='main'] | //main")
_HEADING_LINKS = etree.XPath("//h1//a | //h2//a | //h3//a | //h4//a | //h5//a | //h6//a")
_INLINE_CODE = etree.XPath("//code[not(ancestor::pre)] | //tt[not(ancestor::pre)]")
_DECLARED_LANGUAGE = etree.XPath(
    "string((/html/@lang | /html/@xml:lang"
    " | //head/meta[translate(@http-equiv, 'CONTENT-LANGUAGE', 'content-language')='content-language']/@content"
    " | //head/meta[@property='og:locale']/@content)[1])")
_DATES = {"extensive_search": False, "original_date": True}  # declared dates only: guessing is slow and wrong
_MARKER = "SYNTHSTREAMPRE{}END"
_FENCED_MARKER = re.compile(r"^(`{3,}|~{3,})[^\n]*\nSYNTHSTREAMPRE(\d+)END\n.*?^\1[ \t]*$", re.DOTALL | re.MULTILINE)
_LOOSE_MARKER = re.compile(r"SYNTHSTREAMPRE(\d+)END\n?")
_BACKTICKS = re.compile(r"`{3,}")
# trafilatura backslash-escapes Markdown syntax in prose (root\_path, \[1\]); the text is for
# reading, not for rendering, so those escapes are undone outside code spans.
_CODE_SPAN = re.compile(r"((?<![\\`])(`+)(?!`).+?(?<!`)\2(?!`))", re.DOTALL)
_MARKDOWN_ESCAPE = re.compile(r"\\([\\*_`~\[\]<>#+.()-])")


@dataclass(frozen=True)
class Extracted:
    text: str
    title: str | None = None
    url: str | None = None
    date: str | None = None  # as the page declares it (ISO), never guessed from its text
    language: str | None = None  # as the page declares it (<html lang>, Content-Language)
    fallback: bool = False  # no main content found: this is html_text's plain text

    def meta(self) -> dict[str, str]:
        """title, url, date and language, those that are known."""
        fields = {"title": self.title, "url": self.url, "date": self.date, "language": self.language}
        return {key: value for key, value in fields.items() if value}


@dataclass(frozen=True)
class _CodeBlock:
    code: str
    language: str | None
    span: HtmlElement  # where the block's marker (and, for trafilatura, its text) is in the tree


def extract(html: str | bytes, url: str | None = None) -> Extracted | None:
    """The page's main content and metadata; None if it has no text at all.

    Bytes are decoded as the page says (or as UTF-8, or as guessed)."""
    page = decode_file(html) if isinstance(html, bytes) else html
    tree = load_html(page)
    if tree is None:
        return _fallback(page, url, None)
    language = _declared_language(tree)
    for element in [*_NOT_CONTENT(tree), *_PERMALINKS(tree)]:
        if element.getparent() is not None:
            element.drop_tree()
    title, page_url, date = _page_meta(tree, url)
    main = _declared_main(tree)
    text = to_markdown(main) if main is not None else ""
    if not text:
        text = _generic_text(tree, url)
    if not text:
        return _fallback(page, url, language)
    return Extracted(text=text, title=title, url=page_url, date=date, language=language)


def _declared_main(tree: HtmlElement) -> HtmlElement | None:
    """The element the page calls its main content (the first, outermost one)."""
    found = _DECLARED_MAIN(tree)
    return found[0] if found else None


def _generic_text(tree: HtmlElement, url: str | None) -> str:
    """A page that does not name its main content: trafilatura tells which text is content (its
    boilerplate removal), producers.main_element finds the element holding that text, and that
    element is written out whole by producers.markdown (trafilatura's own Markdown loses headings,
    terms and code). Where trafilatura keeps nothing, the element is found by its text alone; where
    that is empty too, trafilatura's text stands."""
    layout = copy.deepcopy(tree)  # _trafilatura_text changes the tree it reads
    kept = _trafilatura_text(tree, url)
    found = main_element(layout, kept or None)
    text = to_markdown(found) if found is not None else ""
    return text or kept


def _trafilatura_text(tree: HtmlElement, url: str | None) -> str:
    for link in _HEADING_LINKS(tree):
        link.drop_tag()
    for code in _INLINE_CODE(tree):
        for node in code.iter():
            if node.text:
                node.text = node.text.replace("\n", " ")
            if node is not code and node.tail:
                node.tail = node.tail.replace("\n", " ")
    blocks = _mark_code_blocks(tree)
    for block in blocks:
        block.span.text += f"\n{block.code}"
    # favor_precision: for training data a missed aside costs less than kept boilerplate, and the
    # balanced mode answers short pages with its whole-page "baseline" (menus included). fast: its
    # second opinions (readability, jusText) cost a quarter of the page's time and, measured on
    # trafilatura's own evaluation pages, moved what producers.main_element finds by under 1%.
    document = trafilatura.bare_extraction(
        tree, url=url, favor_precision=True, fast=True, include_formatting=True, include_tables=True, include_links=False,
        include_comments=False, include_images=False)
    text = _restore_code_blocks(document.text, blocks).strip() if document is not None and document.text else ""
    return _with_table_headers(text)


def _page_meta(tree: HtmlElement, url: str | None) -> tuple[str | None, str | None, str | None]:
    """Title, URL and declared date, read as trafilatura's extract_metadata reads them (meta tags,
    then JSON-LD, then the page), without the author, site name, tags and licence lookups it also
    makes: those were a fifth of the feed's time per page and nothing uses them."""
    metadata = examine_meta(tree)
    try:
        metadata = extract_meta_json(tree, metadata)
    except Exception:  # noqa: BLE001 - trafilatura's JSON-LD reader breaks on odd pages; meta tags stand
        pass
    title = _clean(metadata.title) or _clean(extract_title(tree))
    page_url = url or _clean(metadata.url) or _clean(extract_url(tree))
    return title, page_url, _clean(find_date(_head_only(tree), url=page_url, **_DATES))


def _head_only(tree: HtmlElement) -> HtmlElement:
    """A page of the tree's <head> alone: what the page declares, none of its text."""
    page = lxml_html.fromstring("<html><body></body></html>")
    head = tree.find(".//head")
    if head is not None:
        page.insert(0, copy.deepcopy(head))
    return page


def _fallback(page: str, url: str | None, language: str | None) -> Extracted | None:
    try:
        text, title = extract_main_text(page)
    except AssertionError:  # html.parser's way of giving up on malformed markup
        return None
    return Extracted(text=text, title=title, url=url, language=language, fallback=True) if text else None


def _declared_language(tree: HtmlElement) -> str | None:
    language = str(_DECLARED_LANGUAGE(tree)).strip().replace("_", "-")
    return language.split(",")[0].strip() or None


def _clean(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


# Code blocks ---------------------------------------------------------------------------------------
def _mark_code_blocks(tree: HtmlElement) -> list[_CodeBlock]:
    """Replaces each outermost <pre>'s content with a marker line (its text is added back after
    the metadata is read, so that trafilatura still weighs it and keeps it as code); returns the
    verbatim blocks."""
    blocks: list[_CodeBlock] = []
    for pre in list(tree.iter("pre")):
        if any(ancestor.tag == "pre" for ancestor in pre.iterancestors()):
            continue
        code = pre.text_content().strip("\n")
        language = code_language(pre)
        for child in list(pre):
            pre.remove(child)
        # A <pre> holding one <span> is what trafilatura reliably takes for code.
        span = etree.SubElement(pre, "span")
        pre.text, span.text = None, _MARKER.format(len(blocks))
        blocks.append(_CodeBlock(code, language, span))
    return blocks


def _fence(block: _CodeBlock) -> str:
    longest = max((len(run) for run in _BACKTICKS.findall(block.code)), default=2)
    fence = "`" * max(3, longest + 1)
    return f"\n{fence}{block.language or ''}\n{block.code}\n{fence}\n"


def _restore_code_blocks(text: str, blocks: list[_CodeBlock]) -> str:
    """Each fenced marker becomes its verbatim block; a marker trafilatura left outside a fence
    (inside a table cell, say) is only removed, keeping trafilatura's text of the block. Prose
    between the blocks loses its Markdown escapes."""
    pieces: list[str] = []
    end = 0
    for match in _FENCED_MARKER.finditer(text):
        pieces += [_unescape(text[end:match.start()]), _fence(blocks[int(match.group(2))])]
        end = match.end()
    pieces.append(_unescape(text[end:]))
    return _LOOSE_MARKER.sub("", "".join(pieces))


def _unescape(prose: str) -> str:
    parts = _CODE_SPAN.split(prose)  # [prose, span, its backticks, prose, span, its backticks, ...]
    return "".join(_MARKDOWN_ESCAPE.sub(r"\1", part) if index % 3 == 0 else part
                   for index, part in enumerate(parts) if index % 3 != 2)


_TABLE_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


def _with_table_headers(text: str) -> str:
    """Markdown tables need a separator row (`| --- |`) after their first row, which trafilatura
    leaves out: without it the rows are not a table to a Markdown reader. Code blocks are left
    as they are."""
    lines, out, fenced = text.split("\n"), [], False
    for i, line in enumerate(lines):
        out.append(line)
        if line.startswith("```"):
            fenced = not fenced
        starts_table = (not fenced and line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|")))
        if starts_table and i + 1 < len(lines) and lines[i + 1].startswith("|") and not _TABLE_SEPARATOR.match(lines[i + 1]):
            cells = max(1, line.strip().strip("|").count("|") + 1)
            out.append("|" + " --- |" * cells)
    return "\n".join(out)

