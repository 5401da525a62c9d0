"""The main content element of a page that does not name it (no `role="main"`, no `<main>`), for
producers.extract to write out with producers.markdown: manuals built by DocBook, Texinfo, doxygen
and the like lay a page out as navigation, content, navigation, and say so only in class names.

- Furniture goes first: `<header>`, `<footer>`, `<aside>`, `<nav>` and elements whose class says
  navigation (navheader, navfooter, header, footer, sidebar, menu, toc, breadcrumbs, related, …),
  unless they hold a heading and are not mostly links (an article's `<header>` with its title);
  footnotes are content (`<aside class="footnote" role="note">`);
  and link-dense blocks without a heading (lists, tables, divisions whose text is mostly links:
  menus, tables of contents, "Next: … Up: …" lines), unless they follow a heading in their parent
  (a section's list of links is its content; a "See also" section keeps its links).
- Then from `<body>` down: as long as one child holds nearly all (90%) of the text a boilerplate
  remover kept (trafilatura, given by the caller) and the others hold no h1, that child is the
  content; without such text, by the text that is not links, and the others may hold no heading. Where the text divides (a section
  beside its title, two columns of prose), the element holding both is.
- Inside it, blocks trafilatura judged boilerplate go (comments, "related" lists, bylines inside an
  article's container): see _keep_judged_blocks.
Passes are iterative (reverse document order), so hostile nesting cannot exhaust the stack.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from lxml.html import HtmlElement

__all__ = ["main_element"]

_FURNITURE_BLOCKS = frozenset({"div", "section", "header", "footer", "aside", "nav", "ul", "ol", "dl", "table",
                               "menu", "p"})
_FURNITURE_TAGS = frozenset({"header", "footer", "aside", "nav"})
_FURNITURE_NAMES = frozenset({"header", "footer", "navheader", "navfooter", "navbar", "navigation", "nav",
                              "sidebar", "sphinxsidebar", "menu", "toc", "breadcrumb", "breadcrumbs",
                              "related", "skip-link", "skiplink", "pagination", "pager", "contents",
                              "table-of-contents"})  # "contents": docutils and makeinfo tables of contents
_FURNITURE_PREFIXES = ("nav-", "toc-", "contents-", "navbar-", "sidebar-", "breadcrumb", "site-header", "site-footer", "page-footer",
                       "menu-")
_FURNITURE_SUFFIXES = ("-nav", "-navigation", "-navbar", "-sidebar", "-footer", "-menu", "-toc", "-breadcrumbs")
_NOTES = frozenset({"note", "doc-footnote", "doc-endnotes", "doc-endnote"})
_UNSEEN = frozenset({"script", "style", "noscript", "template", "head", "title", "meta", "link", "svg"})
_HEADINGS = frozenset({"h1", "h2", "h3", "h4"})
_ALL_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_LINK_DENSE_BLOCKS = frozenset({"ul", "ol", "dl", "table", "div", "menu"})
_LINK_DENSITY = 0.6  # share of a block's text that is link text, from which it is navigation
_SHARE = 0.9  # share of the text one child must hold to be the content instead of its parent
# what the content can be: a block holding blocks (a <pre>, a list or a data table is written whole)
_CONTAINERS = frozenset({"div", "section", "article", "center", "span", "font", "table", "tbody", "tr", "td", "th"})
_MIN_RUN = 12
_TABLE_PARTS = frozenset({"table", "tbody", "thead", "tfoot", "tr"})
# the block check inside the content element (_keep_judged_blocks)
_KEPT = 0.5  # share of a prose block's text trafilatura must have kept
# a part of the content holding this many headings, of whose text trafilatura kept this share, is
# content throughout (release notes: trafilatura drops some of their short sections whole)
_WHOLLY_KEPT = 0.9
_SECTIONS = 10
_LONG_PROSE = 200  # characters of a paragraph kept though trafilatura dropped it
_KEPT_WHOLE = frozenset({*_ALL_HEADINGS, "pre", "dl", "table"})
_BLOCKS = frozenset({"div", "section", "article", "header", "footer", "aside", "nav", "p", "ul", "ol", "li",
                     "blockquote", "figure", "figcaption", "form", "address", "center", "menu"})
_INLINE = frozenset({"a", "span", "b", "i", "em", "strong", "code", "sub", "sup", "small", "br", "img", "abbr", "cite",
                     "q", "mark", "s", "u", "time", "font", "label", "kbd", "var", "samp", "wbr", "tt", "del", "ins",
                     "bdi", "bdo", "data", "dfn", "big", "strike", "nobr", *_UNSEEN})
# class/id names of blocks that are not the article: as a part of a name (a hyphen between parts) …
_BOILERPLATE_NAMES = frozenset({"meta", "footer", "sidebar", "tags", "ad", "ads", "advert", "postmetadata", "rating",
                                "ratings"})
# … or inside one ("post-authorbox", "ArticlePage-authorInfo", "commentlist")
_BOILERPLATE_STEMS = ("comment", "related", "share", "sharing", "social", "byline", "author", "widget", "promo",
                      "newsletter", "subscribe", "breadcrumb")


def _tag(element: HtmlElement) -> str:
    return element.tag.lower() if isinstance(element.tag, str) else ""


def _length(text: str | None) -> int:
    return len(text.strip()) if text else 0


class _Measures:
    """Per element: characters of text, of link text, and h1–h4 headings (none under _UNSEEN)."""

    def __init__(self, root: HtmlElement) -> None:
        self.text: dict[HtmlElement, int] = {}
        self.links: dict[HtmlElement, int] = {}
        self.headings: dict[HtmlElement, int] = {}
        self.titles: dict[HtmlElement, int] = {}  # h1 only
        for element in reversed(list(root.iter())):  # children before their parents
            tag = _tag(element)
            if not tag or tag in _UNSEEN:
                self.text[element] = self.links[element] = self.headings[element] = self.titles[element] = 0
                continue
            text, links, headings, titles = _length(element.text), 0, int(tag in _HEADINGS), int(tag == "h1")
            for child in element:
                text += self.text.get(child, 0) + _length(child.tail)
                links += self.links.get(child, 0)
                headings += self.headings.get(child, 0)
                titles += self.titles.get(child, 0)
            self.text[element] = text
            self.links[element] = text if tag == "a" else links
            self.headings[element] = headings
            self.titles[element] = titles

    def forget(self, element: HtmlElement) -> None:
        """Takes `element` (about to be dropped) out of its ancestors' counts."""
        text, links = self.text[element], self.links[element]  # drop_tree keeps its tail
        headings, titles = self.headings[element], self.titles[element]
        for ancestor in element.iterancestors():
            if ancestor not in self.text:
                break
            self.text[ancestor] -= text
            self.links[ancestor] -= text if _tag(ancestor) == "a" else links
            self.headings[ancestor] -= headings
            self.titles[ancestor] -= titles

    def prose(self, element: HtmlElement) -> int:
        return self.text[element] - self.links[element]

    def link_dense(self, element: HtmlElement) -> bool:
        text = self.text[element]
        return text > 0 and self.links[element] >= _LINK_DENSITY * text


def _furniture(element: HtmlElement, tag: str) -> bool:
    if tag not in _FURNITURE_BLOCKS:  # a heading's link of class "toc-backref" is the heading's text
        return False
    names = (element.get("class") or "").lower().replace("_", "-").split()
    if (element.get("id") or "").lower() in _FURNITURE_NAMES:  # id="menu", id="footer"; not slugs like "footer-api"
        return True
    if _footnote(element):
        return False  # docutils writes footnotes as <aside class="footnote" role="note">
    if tag in _FURNITURE_TAGS:
        return True
    return any(name in _FURNITURE_NAMES or name.startswith(_FURNITURE_PREFIXES) or name.endswith(_FURNITURE_SUFFIXES)
               for name in names)


def _under_heading(element: HtmlElement) -> bool:
    """Whether a heading comes before `element` in its parent: a list of links under a section's
    title is that section's content."""
    return any(_tag(sibling) in _ALL_HEADINGS for sibling in element.itersiblings(preceding=True))


def _prune(body: HtmlElement, measures: _Measures) -> None:
    """Drops furniture and link-dense blocks under `body`, taking them out of `measures`."""
    todo = list(body)
    while todo:
        element = todo.pop()
        tag = _tag(element)
        if not tag or tag in _UNSEEN:
            continue
        dense = tag in _LINK_DENSE_BLOCKS and measures.link_dense(element)
        titled = measures.headings[element] > 0
        if _furniture(element, tag):
            drop = dense or not titled
        else:
            drop = dense and not titled and not _under_heading(element)
        if drop:
            measures.forget(element)
            element.drop_tree()
        else:
            todo.extend(element)


def main_element(tree: HtmlElement, kept_text: str | None = None) -> HtmlElement | None:
    """The element holding the page's content, furniture removed from it; None without a body.
    `kept_text`: what a boilerplate remover (trafilatura) kept of the page, when it kept anything:
    then the content is where that text is, not merely where most text is (a news page's
    comment thread or link lists can outweigh its article). Changes the tree (drops the furniture)."""
    body = tree.find(".//body") if _tag(tree) != "body" else tree
    if body is None:
        return None
    measures = _Measures(body)
    empty = set(_empty_headings(body)) if kept_text else set()  # as written, before anything is dropped
    _prune(body, measures)
    weight = _found_in(body, kept_text) if kept_text else measures.prose
    # headings the content must not be cut from: any, judging by text alone; the page's title (h1),
    # judging by kept text (a sidebar's widgets have headings of their own)
    headings = measures.titles if kept_text else measures.headings
    node = body
    while True:
        children = [child for child in node if _tag(child)]
        if not children:
            break
        best = max(children, key=weight)
        whole = weight(node)
        if (_tag(best) not in _CONTAINERS or whole <= 0 or weight(best) < _SHARE * whole
                or headings[best] < headings[node]):
            break
        node = best
    while _tag(node) in _TABLE_PARTS and node.getparent() is not None:  # a table is written whole, or not at all
        node = node.getparent()
    if kept_text:
        _trim_edges(node, weight)
        _keep_judged_blocks(node, kept_text, empty)
        return _with_title(node, measures)
    return node


def _with_title(node: HtmlElement, measures: _Measures) -> HtmlElement:
    """`node`, or, when it holds no heading and its title stands just before it (a DocBook
    titlepage, an <h2> above a table), a new element holding that title and `node`."""
    if measures.headings.get(node, 0) or node.getparent() is None:
        return node
    for element in [node, *list(node.iterancestors())[:3]]:
        before = element.getprevious()
        while before is not None and (not _tag(before) or not measures.text.get(before, 0)):  # anchors
            before = before.getprevious()
        if before is None:
            continue
        if measures.headings.get(before, 0) and measures.text[before] <= 2 * _heading_text(before):
            wrapper = node.makeelement("div", {})
            wrapper.append(copy.deepcopy(before))
            wrapper.append(copy.deepcopy(node))
            return wrapper
        break
    return node


def _heading_text(element: HtmlElement) -> int:
    return sum(_length(heading.text_content()) for heading in element.iter(*_HEADINGS))


def _trim_edges(node: HtmlElement, weight: Callable[[HtmlElement], int]) -> None:
    """Drops what comes before the first and after the last block holding kept text (bylines,
    dates, share bars, "read more", comment forms), and so on inside those two blocks; blocks that
    hold code, terms, tables or footnotes stay wherever they are, and so do headings before the
    content (the page's title). A last section of links alone ("See also") goes too, if trafilatura
    kept none of it: the price of leaving out "Related articles"."""
    todo = [node]
    while todo:
        element = todo.pop()
        children = [child for child in element if _tag(child)]
        holding = [i for i, child in enumerate(children) if weight(child) > 0]
        if not holding:
            continue
        first, last = holding[0], holding[-1]
        for index, child in enumerate(children):
            if first <= index <= last or _tag(child) in _UNSEEN or _substantial(child, before=index < first):
                continue
            child.drop_tree()
        if _tag(children[first]) in _CONTAINERS:
            todo.append(children[first])
        if last != first and _tag(children[last]) in _CONTAINERS:
            todo.append(children[last])


def _substantial(element: HtmlElement, before: bool) -> bool:
    """Code, terms, tables, footnotes; before the content also headings."""
    kinds = ("pre", "dt", "table", *(_ALL_HEADINGS if before else ()))
    return any(_tag(e) in kinds or _footnote(e) for e in element.iter())


def _footnote(element: HtmlElement) -> bool:
    names = (element.get("class") or "").lower().split()
    return element.get("role") in _NOTES or any(name.startswith(("footnote", "endnote")) for name in names)


def _found_in(root: HtmlElement, kept_text: str) -> Callable[[HtmlElement], int]:
    """Per element, the characters of its text that are in `kept_text` (by runs of text between
    tags, spaces collapsed; runs under _MIN_RUN characters are too common to tell)."""
    found, _ = _judged(root, kept_text)
    return lambda element: found.get(element, 0)


def _judged(root: HtmlElement, kept_text: str) -> tuple[dict[HtmlElement, int], dict[HtmlElement, int]]:
    """Per element under `root`: characters of its runs found in `kept_text`, and of its runs long
    enough to tell (see _found_in)."""
    kept = " ".join(kept_text.split())
    found: dict[HtmlElement, int] = {}
    judgeable: dict[HtmlElement, int] = {}
    for element in reversed(list(root.iter())):
        tag = _tag(element)
        if not tag or tag in _UNSEEN:
            found[element] = judgeable[element] = 0
            continue
        total, told = _run_found(element.text, kept)
        for child in element:
            child_found, child_told = _run_found(child.tail, kept)
            total += found.get(child, 0) + child_found
            told += judgeable.get(child, 0) + child_told
        found[element], judgeable[element] = total, told
    return found, judgeable


def _run_found(text: str | None, kept: str) -> tuple[int, int]:
    """(characters found, characters judged) of one run of text."""
    run = " ".join(text.split()) if text else ""
    if len(run) < _MIN_RUN:
        return 0, 0
    return (len(run) if run in kept else 0), len(run)


def _keep_judged_blocks(node: HtmlElement, kept_text: str, empty: set[HtmlElement]) -> None:
    """Inside the content element, drops the blocks trafilatura judged boilerplate: prose blocks
    (paragraphs, list items, divisions of inline text) of whose text it kept under half, and blocks
    named as comments, related links, share bars, bylines and the like unless it kept most of
    them or it holds most of what trafilatura kept (a theme's "sidebar-right" layout). Headings,
    code, terms and tables stay (trafilatura drops those for their own reasons), except headings
    with no kept text under them ("Comments", "Related articles")."""
    found, judgeable = _judged(node, kept_text)
    kept = " ".join(kept_text.split())

    def mostly_kept(element: HtmlElement) -> bool:
        return found[element] >= _KEPT * judgeable[element]

    manual = node.find(".//pre") is not None or node.find(".//dl") is not None
    # per block: whether it is in a manual's section (nothing judged) or in a section trafilatura
    # kept nearly all of (its paragraphs are content too; short lines are still judged)
    todo = [(child, manual, False) for child in node if _tag(child)]
    trusted_parts: set[HtmlElement] = set()
    while todo:
        element, technical, trusted = todo.pop()
        tag = _tag(element)
        if not tag or tag in _UNSEEN or tag in _KEPT_WHOLE or _footnote(element):
            continue
        if tag in _BLOCKS and _boilerplate_named(element):
            if not judgeable[element] or not (mostly_kept(element) or found[element] >= _KEPT * found[node]):
                element.drop_tree()
                continue
        if any(_tag(child) not in _INLINE for child in element if _tag(child)):
            inner = trusted or (judgeable[element] > 0 and found[element] >= _WHOLLY_KEPT * judgeable[element]
                                and sum(1 for _ in element.iter(*_ALL_HEADINGS)) >= _SECTIONS)
            if inner:
                trusted_parts.add(element)
            todo.extend((child, technical or _technical(element), inner) for child in element if _tag(child))
        elif technical:
            continue
        elif judgeable[element]:
            if not (trusted or mostly_kept(element) or _long_prose(element)):
                element.drop_tree()
        elif (text := " ".join(element.text_content().split())) and text not in kept:
            element.drop_tree()  # "Read more", "Views:", "Tags": too short to judge by runs, and not kept
    # "Comments", "Related articles", "Tags" with nothing trafilatura kept under them
    for heading in _empty_headings(node) if manual else _empty_headings(node, kept):
        if (heading not in empty and heading.getparent() is not None
                and " ".join(heading.text_content().split()) not in kept
                and not any(ancestor in trusted_parts for ancestor in heading.iterancestors())):
            heading.drop_tree()


def _technical(element: HtmlElement) -> bool:
    """A manual's section: it holds code or terms beside its prose, which trafilatura judges poorly
    (it drops whole stretches of an API reference); its paragraphs are kept unjudged, and so are all
    of a content element that holds code or terms anywhere."""
    return any(_tag(child) in ("pre", "dl") or (_tag(child) == "div" and child.find("pre") is not None)
               for child in element)


def _long_prose(element: HtmlElement) -> bool:
    """A paragraph too long and too free of links to be a byline, caption or teaser link
    (trafilatura drops some leads and paragraphs set apart by their markup)."""
    text = _length(element.text_content())
    links = sum(_length(link.text_content()) for link in element.iter("a"))
    return text >= _LONG_PROSE and links < 0.3 * text


def _boilerplate_named(element: HtmlElement) -> bool:
    """By its class names, or its whole id (ids are often slugs of a section's title)."""
    if (element.get("id") or "").lower().replace("_", "-") in _BOILERPLATE_NAMES | set(_BOILERPLATE_STEMS):
        return True
    names = (element.get("class") or "").lower().replace("_", "-").split()
    return any(part in _BOILERPLATE_NAMES for name in names for part in name.split("-")) or any(
        stem in name for name in names for stem in _BOILERPLATE_STEMS)


def _empty_headings(node: HtmlElement, kept: str | None = None) -> list[HtmlElement]:
    """Headings followed by no text before the next heading of their rank or above; given `kept`,
    by no text trafilatura kept, code or table."""
    def content(text: str | None) -> bool:
        if kept is None:
            return bool(_length(text))
        run = " ".join(text.split()) if text else ""
        return len(run) >= _MIN_RUN and run in kept

    open_headings: list[tuple[int, HtmlElement]] = []
    empty: list[HtmlElement] = []
    inside: HtmlElement | None = None  # the heading whose text is being walked
    for element in node.iter():
        tag = _tag(element)
        if inside is not None and element is not inside and inside not in element.iterancestors():
            inside = None
        if tag in _ALL_HEADINGS and inside is None:
            rank = int(tag[1])
            while open_headings and open_headings[-1][0] >= rank:
                empty.append(open_headings.pop()[1])
            open_headings.append((rank, element))
            inside = element
            if content(element.tail):
                open_headings.clear()
            continue
        if inside is not None:
            continue  # the heading's own text
        if (not tag or tag in _UNSEEN) and content(element.tail):
            open_headings.clear()
        elif tag and tag not in _UNSEEN and (content(element.text) or content(element.tail)
                                             or tag in ("pre", "table") or (kept is None and tag == "img")):
            open_headings.clear()
    empty.extend(heading for _, heading in open_headings)
    return empty
