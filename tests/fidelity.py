"""How faithfully a page's documents say what the page says (tests/test_fidelity.py).

The page's main content is what its own markup calls the main content: the element with
`role="main"` (Sphinx: `div.body`), else `<main>`, else `<article>`. Pages that name none are
read as their generator (its `<meta name="generator">`) lays them out:

- DocBook XSL (PostgreSQL): the `<body>` less its navigation header and footer (`div.navheader`,
  `div.navfooter`: Prev/Up/Home/Next) and the tables of contents (`div.toc`: links to the
  sections and pages below, repeating their titles);
- Texinfo's makeinfo (Octave): the `<body>` less the node navigation lines (`div.header`:
  Next/Previous/Up, [Contents][Index]), the menus of child nodes (`ul.section-toc`, `table.menu`)
  and the table of contents of the Top page with its title (`div.Contents_element`);
- else Sphinx's `div.body`.

The header, the sidebars and the footer are outside it. Taken out of it are also permalink anchors
("¶": markup, not content) and navigation inside it (`<nav>`, `role="navigation"`: a local table of
contents repeating the headings as links). Per page, four shares of the main content reach the page's documents
(all parts joined):

- headings: h1–h4 whose text (spaces collapsed) is a Markdown heading line (`#`…) of the documents;
- terms: <dt> whose text (spaces collapsed) is in the documents (spaces collapsed, backticks gone:
  a signature may be written as code);
- code: the lines of every <pre> (non-blank, trailing spaces ignored), each found verbatim as a
  line of a fenced code block of the documents (less the indentation of its fence, as Markdown
  reads a block inside a list item), as many times as the page has it;
- characters: the non-ASCII characters of the main content, as many times as the page has each.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from lxml import etree
from lxml import html as lxml_html

KINDS = ("headings", "terms", "code", "characters")
def _class(name: str) -> str:
    return f"contains(concat(' ', normalize-space(@class), ' '), ' {name} ')"


_DECLARED = ("//*[@role='main']", "//main", "//article")
_GENERATOR = etree.XPath("string(//head/meta[translate(@name, 'GENERATOR', 'generator')='generator']/@content)")
# generator (start of its meta content) -> its navigation inside <body>
_GENERATED = {
    "DocBook XSL": f"//div[{_class('navheader')} or {_class('navfooter')} or {_class('toc')}]",
    "makeinfo": f"//div[{_class('header')} or {_class('Contents_element')}] | //ul[{_class('section-toc')}]"
                f" | //table[{_class('menu')}]",
}
_SPHINX_BODY = f"//div[{_class('body')}]"
_NOT_CONTENT = etree.XPath(f".//a[{_class('headerlink')} or {_class('copiable-anchor')}]"
                           " | .//nav | .//*[@role='navigation']")
_FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})")
_SPACES = re.compile(r"\s+")
_HEADING_LINE = re.compile(r"^#{1,6} +(.*?)\s*$", re.MULTILINE)


@dataclass
class Share:
    reached: int = 0
    total: int = 0

    @property
    def value(self) -> float:
        return self.reached / self.total if self.total else 1.0


def main_content(page: bytes) -> etree._Element | None:
    tree = lxml_html.fromstring(page)
    main = _declared_or_generated(tree)
    if main is not None:
        for element in _NOT_CONTENT(main):
            if element.getparent() is not None:
                element.drop_tree()
    return main


def _declared_or_generated(tree: etree._Element) -> etree._Element | None:
    for xpath in _DECLARED:
        found = tree.xpath(xpath)
        if found:
            return found[0]
    generator = str(_GENERATOR(tree)).strip()
    for name, navigation in _GENERATED.items():
        body = tree.find(".//body")
        if generator.startswith(name) and body is not None:
            for element in body.xpath("." + navigation):
                if element.getparent() is not None:
                    element.drop_tree()
            return body
    found = tree.xpath(_SPHINX_BODY)
    return found[0] if found else None


def _flat(text: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()


def _code_lines(text: str) -> list[str]:
    """The lines inside the fenced code blocks of `text`, less their fence's indentation."""
    found: list[str] = []
    fence, indent = "", ""
    for line in text.splitlines():
        if not fence:
            opening = _FENCE.match(line)
            if opening:
                indent, fence = opening.groups()
        elif line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            fence = ""
        else:
            found.append((line[len(indent):] if line.startswith(indent) else line).rstrip())
    return found


def measure(page: bytes, documents: list[str]) -> dict[str, Share]:
    """The four shares of `page`'s main content reaching `documents` (its parts, in order)."""
    main = main_content(page)
    shares = {kind: Share() for kind in KINDS}
    if main is None:
        return shares
    text = unicodedata.normalize("NFC", "\n".join(documents))
    headings = Counter(_flat(h) for h in _HEADING_LINE.findall(text))
    flat = _flat(text.replace("`", ""))
    lines = Counter(_code_lines(text))

    for element in main.iter("h1", "h2", "h3", "h4"):
        wanted = _flat(element.text_content())
        if wanted:
            shares["headings"].total += 1
            shares["headings"].reached += headings[wanted] > 0
    for element in main.iter("dt"):
        wanted = _flat(element.text_content())
        if wanted:
            shares["terms"].total += 1
            shares["terms"].reached += wanted in flat
    code: Counter[str] = Counter()
    for element in main.iter("pre"):
        if not any(ancestor.tag == "pre" for ancestor in element.iterancestors()):
            code.update(line.rstrip() for line in unicodedata.normalize("NFC", element.text_content()).splitlines()
                        if line.strip())
    shares["code"] = Share(sum(min(n, lines[line]) for line, n in code.items()), code.total())
    wanted_chars = Counter(c for c in unicodedata.normalize("NFC", main.text_content()) if ord(c) > 127 and not c.isspace())
    found_chars = Counter(c for c in text if ord(c) > 127)
    shares["characters"] = Share(sum(min(n, found_chars[c]) for c, n in wanted_chars.items()), wanted_chars.total())
    return shares
