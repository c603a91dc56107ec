"""Wikipedia dump pages to prose paragraphs.

The gensim wheel ships a shortened English Wikipedia dump; only its article prose is speakable.
This strips MediaWiki markup (templates, tables, references, files, categories, emphasis, headings,
lists) well enough for synthesis. It is deliberately a small regex pass, not a parser: a leftover
fragment only costs a slightly odd sentence, which the normaliser then reduces to plain words.
"""

from __future__ import annotations

import bz2
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Iterator

_NON_ARTICLE_LINK = re.compile(r"^\s*:?\s*(file|image|category|media|wikipedia|template|help|"
                               r"portal|[a-z]{2,3}(-[a-z]+)?)\s*:", re.IGNORECASE)
_END_SECTIONS = re.compile(r"^==+\s*(see also|references|notes|external links|further reading|"
                           r"bibliography|sources|footnotes)\s*==+", re.IGNORECASE | re.MULTILINE)


def _remove_nested(text: str, innermost: re.Pattern) -> str:
    """Remove innermost matches repeatedly so that nested constructs disappear from the inside."""
    while True:
        text, count = innermost.subn(" ", text)
        if count == 0:
            return text


def _replace_links(text: str) -> str:
    """``[[target|label]]`` -> label, ``[[target]]`` -> target; file, category and interlanguage
    links vanish. Innermost first, so captions of file links lose their own links first."""
    innermost = re.compile(r"\[\[([^\[\]]*)\]\]")

    def replace(match: re.Match) -> str:
        body = match.group(1)
        if _NON_ARTICLE_LINK.match(body):
            return " "
        return body.rsplit("|", 1)[-1]

    while True:
        text, count = innermost.subn(replace, text)
        if count == 0:
            return text


def strip_wiki_markup(wikitext: str) -> list[str]:
    """Prose paragraphs of one article, markup removed, in order.

    Everything from the first "See also"/"References"/"External links" heading on is dropped, as
    are headings, list items, indented lines and tables.
    """
    end = _END_SECTIONS.search(wikitext)
    text = wikitext[: end.start()] if end else wikitext
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.DOTALL)
    text = re.sub(r"<ref[^>/]*/>", " ", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", " ", text, flags=re.DOTALL | re.IGNORECASE)
    text = re.sub(r"<(math|gallery|timeline|code|pre|score)[^>]*>.*?</\1>", " ", text,
                  flags=re.DOTALL | re.IGNORECASE)
    text = _remove_nested(text, re.compile(r"\{\{[^{}]*\}\}"))
    text = _remove_nested(text, re.compile(r"\{\|(?:(?!\{\|)[\s\S])*?\|\}"))
    text = _replace_links(text)
    text = re.sub(r"\[(?:https?|ftp)://\S+\s*([^\]]*)\]", r"\1", text)
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"'{2,}", "", text)
    paragraphs = []
    for line in text.split("\n"):
        line = line.strip()
        if not line or line[0] in "=*#:;|!{}" or line.startswith("----"):
            continue
        paragraphs.append(re.sub(r"\s+", " ", line))
    return paragraphs


def iter_wiki_pages(dump_path: Path) -> Iterator[tuple[str, str, str]]:
    """``(page_id, title, wikitext)`` for every article (namespace 0, not a redirect) of a bz2
    MediaWiki XML dump, streamed so the whole dump is never held in memory."""
    with bz2.open(dump_path, "rb") as stream:
        for _, element in ElementTree.iterparse(stream, events=("end",)):
            if not element.tag.endswith("}page"):
                continue
            namespace = element.tag[: -len("page")]
            ns = element.findtext(f"{namespace}ns")
            redirect = element.find(f"{namespace}redirect")
            text = element.findtext(f"{namespace}revision/{namespace}text") or ""
            if ns == "0" and redirect is None and not text.lstrip().lower().startswith("#redirect"):
                yield element.findtext(f"{namespace}id") or "", \
                    element.findtext(f"{namespace}title") or "", text
            element.clear()
