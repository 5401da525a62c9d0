"""producers.markdown: an element's content as Markdown that keeps what the page says."""

from __future__ import annotations

from lxml import html as lxml_html

from producers.extract import extract
from producers.markdown import to_markdown


def md(body: str) -> str:
    return to_markdown(lxml_html.fromstring(f"<div>{body}</div>"))


def test_headings_keep_their_links_text_and_inline_code_stays_inline():
    assert md("<h2><a href='#q'>Why is <code>x</code> slow?</a></h2><p>Because.</p>") == "## Why is x slow?\n\nBecause."
    wrapped = md("<p>Run <code class='literal'><span>python demo.py</span>\n<span>one two</span></code> now.</p>")
    assert wrapped == "Run `python demo.py one two` now."  # the page's line break inside code is layout


def test_pre_is_verbatim_with_its_language():
    pre = "<div class='highlight-pycon'><pre>&gt;&gt;&gt; def f():\n...     return  1\n\n\n...\n</pre></div>"
    assert md(pre) == "```pycon\n>>> def f():\n...     return  1\n\n\n...\n```"
    assert md("<pre>code with ``` inside</pre>") == "````\ncode with ``` inside\n````"


def test_definition_lists_keep_terms_whole_and_signatures_as_code():
    text = md("<dl class='py function'><dt class='sig sig-object py'><span class='sig-name'>json.dump</span>"
              "(<em>obj</em>, <em>fp</em>, <em>*</em>, <em>skipkeys=False</em>)</dt><dd><p>Serialize.</p></dd></dl>"
              "<dl><dt><code>author</code></dt><dd>The author.</dd><dt>release</dt><dd><p>The full version.</p></dd></dl>")
    assert text == ("`json.dump(obj, fp, *, skipkeys=False)`\n\nSerialize.\n\n`author`\n\nThe author.\n\n"
                    "release\n\nThe full version.")


def test_data_tables_are_markdown_tables_and_layout_tables_their_cells_text():
    data = md("<table><tr><th>JSON</th><th>Python</th></tr><tr><td>object</td><td>dict</td></tr>"
              "<tr><td>a | b</td><td><code>x</code></td></tr></table>")
    assert data == "| JSON | Python |\n| --- | --- |\n| object | dict |\n| a \\| b | `x` |"
    layout = md("<table><tr><td><p>Intro.</p><pre>code()</pre></td><td><ul><li>one</li><li>two</li></ul></td></tr></table>")
    assert layout == "Intro.\n\n```\ncode()\n```\n\n- one\n- two"


def test_lists_nest_without_stray_markers_and_breaks_and_hidden_parts_are_handled():
    text = md("<ul><li><p>First</p><ul><li>inner</li></ul></li><li>Second<br>line</li><li></li></ul>"
              "<ol start='3'><li>three</li></ol><p hidden>secret</p><div role='tabpanel' hidden>Fish shell</div>"
              "<aside class='footnote'><span>[1]</span> <p>A footnote.</p></aside><script>x()</script>")
    assert text == "- First\n\n  - inner\n- Second\n  line\n\n3. three\n\nFish shell\n\n[1]\n\nA footnote."


def test_a_page_without_declared_main_content_keeps_its_link_headings():
    paragraphs = "".join(f"<p>Answer number {i} explains the question above it in a few plain sentences. It "
                         f"says what to do and why it works, with enough words to count as content.</p>"
                         for i in range(3))
    page = ("<html><body><div class='content'>"
            + "".join(f"<h3><a href='#q{i}'>Question {i}: how do I do it?</a></h3>" + paragraphs for i in range(3))
            + "</div></body></html>")
    found = extract(page)
    assert found is not None and not found.fallback
    assert all(f"### Question {i}: how do I do it?" in found.text for i in range(3)), found.text


def test_furniture_inside_the_main_element_is_left_out():
    text = md("<p class='breadcrumbs'><a href='/'>Home</a> › Birds</p><h1>Birds</h1><p>Body text.</p>"
              "<div class='share-buttons'>Share on X</div><section id='related-work'><h2>Related work</h2>"
              "<p>Kept: a section's id is its heading's slug.</p></section><div class='related-posts'>More</div>")
    assert text == "# Birds\n\nBody text.\n\n## Related work\n\nKept: a section's id is its heading's slug."


def test_a_page_laid_out_as_navigation_content_navigation_is_written_from_its_content():
    """DocBook/makeinfo-like layout without role=main: navigation by class, a sidebar with headings
    of its own, a footer; the content keeps its title, terms, code, a footnote and the links under
    its "See also" heading."""
    prose = "".join(f"<p>Paragraph {i} says what the command does and why, in plain sentences of prose.</p>"
                    for i in range(4))
    page = ("<html><head><meta name='generator' content='DocBook XSL'></head><body>"
            "<div class='navheader'><table><tr><th>CREATE INDEX</th></tr><tr><td><a href='a.html'>Prev</a></td>"
            "<td><a href='b.html'>Up</a></td><td><a href='c.html'>Next</a></td></tr></table></div>"
            "<div class='sidebar'><h3>On this site</h3><ul><li><a href='/x'>Blog</a></li><li><a href='/y'>Shop</a></li></ul></div>"
            "<div class='refentry'><h2>CREATE INDEX</h2>" + prose +
            "<pre class='programlisting'>CREATE INDEX  i ON t (c);\n  -- two spaces kept</pre>"
            "<dl class='variablelist'><dt><code>name</code></dt><dd><p>The index's name.</p></dd></dl>"
            "<div class='refsect1'><h2>See Also</h2><a href='d.html'>DROP INDEX</a>, <a href='e.html'>ALTER INDEX</a></div>"
            "<p>A last paragraph of prose, after the links of the section before it, to end the page.</p>"
            "<aside class='footnote' role='note'><p>[1] A footnote.</p></aside>"
            "</div><div class='navfooter'><a href='a.html'>Prev</a> <a href='c.html'>Next</a> <a href='/'>Home</a></div>"
            "<div class='footer'>© Copyright 2024 Example. Made with a generator.</div></body></html>")
    found = extract(page)
    assert found is not None and not found.fallback
    assert found.text.startswith("## CREATE INDEX\n\nParagraph 0"), found.text
    for kept in ("```\nCREATE INDEX  i ON t (c);\n  -- two spaces kept\n```", "`name`\n\nThe index's name.",
                 "[1] A footnote.", "## See Also\n\nDROP INDEX, ALTER INDEX"):
        assert kept in found.text, (kept, found.text)
    for furniture in ("Prev", "Next", "Home", "On this site", "Blog", "© Copyright"):
        assert furniture not in found.text, (furniture, found.text)
