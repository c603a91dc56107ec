"""Text normalisation to plain speakable words.

The demo corpus is synthesised with espeak-ng, which produces odd or empty word events for digits
and symbols (docs/demo_data.md, gotcha 3). So every sentence that reaches the synthesiser, and the
matching text-only corpus, is reduced to ASCII letters, apostrophes inside words and the simple
punctuation ``. , ? !``: numbers are spelled out ("42" -> "forty two", "$5,000" -> "five thousand
dollars", "1999" -> "nineteen ninety nine"), a few symbols become words ("&" -> "and", "%" ->
"percent") and everything else is dropped. Text and speech then describe exactly the same words.
"""

from __future__ import annotations

import html
import re
import unicodedata

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}
_SCALE_WORDS = "thousand|million|billion|trillion"
WORD_PATTERN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_ABBREVIATIONS = (
    "Mr Mrs Ms Dr St Jr Sr Prof Gen Col Lt Sgt Capt Cpl Rev Gov Sen Rep Inc Ltd Co Corp Bros vs "
    "etc Mt Ft Jan Feb Mar Apr Aug Sept Sep Oct Nov Dec No Nos approx"
).split()
_SPOKEN_ABBREVIATIONS = {"Mr": "Mister", "Mrs": "Missus", "Dr": "Doctor", "St": "Saint",
                         "vs": "versus", "etc": "et cetera", "No": "number"}


def spell_number(number: int) -> str:
    """Cardinal number in words, e.g. ``1205 -> "one thousand two hundred five"``."""
    if number < 0:
        return "minus " + spell_number(-number)
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if number < 1000:
        hundreds, rest = divmod(number, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + spell_number(rest))
    for scale, name in _SCALES:
        if number >= scale:
            head, rest = divmod(number, scale)
            return spell_number(head) + " " + name + ("" if rest == 0 else " " + spell_number(rest))
    raise AssertionError("unreachable")


def spell_ordinal(number: int) -> str:
    """Ordinal number in words, e.g. ``21 -> "twenty first"``, ``100 -> "one hundredth"``."""
    words = spell_number(number).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def spell_year(year: int) -> str:
    """A four-digit year the way it is read aloud: 1999 -> "nineteen ninety nine", 1905 ->
    "nineteen oh five", 2001 -> "two thousand one", 2016 -> "twenty sixteen"."""
    century, rest = divmod(year, 100)
    if 2000 <= year <= 2009 or year % 1000 == 0:
        return spell_number(year)
    if rest == 0:
        return spell_number(century) + " hundred"
    if rest < 10:
        return spell_number(century) + " oh " + _ONES[rest]
    return spell_number(century) + " " + spell_number(rest)


def _digits(text: str) -> int:
    return int(text.replace(",", ""))


def _spell_decimal(integer_part: str, fraction: str | None) -> str:
    words = spell_number(_digits(integer_part))
    if fraction:
        words += " point " + " ".join(_ONES[int(d)] for d in fraction)
    return words


def _money(match: re.Match) -> str:
    amount = _spell_decimal(match.group(1), match.group(2))
    scale = match.group(3)
    return f" {amount} {scale + ' ' if scale else ''}dollars "


def _spell_cardinal(text: str) -> str:
    """A written number ("1,000", "3.14", "1999") in words; bare four-digit numbers in 1100-2099
    are read as years, which is what they almost always are in news and encyclopaedia text."""
    if "." in text:
        integer_part, fraction = text.split(".", 1)
        return _spell_decimal(integer_part, fraction)
    value = _digits(text)
    if "," not in text and len(text) == 4 and 1100 <= value <= 2099:
        return spell_year(value)
    return spell_number(value)


def _plural(words: str) -> str:
    """Decades and plurals of numbers: "nineteen ninety" -> "nineteen nineties"."""
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + ("es" if last.endswith("x") else "s")
    return (head + " " + last).strip()


def _clock(match: re.Match) -> str:
    hour, minute, meridiem = int(match.group(1)), int(match.group(2)), match.group(3) or ""
    spoken = spell_number(hour)
    if minute:
        spoken += (" oh " if minute < 10 else " ") + spell_number(minute)
    elif not meridiem:
        spoken += " o'clock"
    return f" {spoken} {' '.join(meridiem.lower().replace('.', ''))} "


def _fold_abbreviations(text: str) -> str:
    """Drop the periods that do not end a sentence (titles, initials, acronyms) so that sentence
    splitting can rely on ``.``."""
    text = re.sub(r"\b((?:[A-Za-z]\.){2,})", lambda m: m.group(1).replace(".", ""), text)
    abbreviations = "|".join(_ABBREVIATIONS)
    text = re.sub(
        rf"\b({abbreviations})\.",
        lambda m: _SPOKEN_ABBREVIATIONS.get(m.group(1), m.group(1)),
        text,
    )
    return re.sub(r"\b([A-Z])\.(?=\s+[A-Z])", r"\1", text)


def _spell_numbers(text: str) -> str:
    text = re.sub(
        rf"\$\s?(\d[\d,]*)(?:\.(\d+))?(?:\s+({_SCALE_WORDS})\b)?", _money, text
    )
    text = re.sub(r"\b(\d{1,2}):(\d{2})\s*([ap]\.?m\.?)?(?![\w])", _clock, text, flags=re.I)
    text = re.sub(r"\b(\d{1,2})\s*([ap])\.?m\b", lambda m: f" {spell_number(int(m.group(1)))} "
                  f"{m.group(2).lower()} m ", text, flags=re.I)
    text = re.sub(r"(\d[\d,]*(?:\.\d+)?)\s?%", r"\1 percent", text)
    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", lambda m: " " + spell_ordinal(int(m.group(1))) + " ",
                  text)
    text = re.sub(r"\b(\d+)'?s\b", lambda m: " " + _plural(_spell_cardinal(m.group(1))) + " ", text)
    text = re.sub(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?",
                  lambda m: " " + _spell_cardinal(m.group(0)) + " ", text)
    return text


def to_ascii(text: str) -> str:
    """Unicode to ASCII: accents folded ("café" -> "cafe"), typographic quotes and dashes mapped to
    their plain forms, anything else dropped."""
    text = html.unescape(text)
    for fancy, plain in (("\u2018", "'"), ("\u2019", "'"), ("\u201c", '"'), ("\u201d", '"'),
                         ("\u2013", "-"), ("\u2014", " - "), ("\u00a0", " "), ("\u2026", "...")):
        text = text.replace(fancy, plain)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def normalise_text(text: str) -> str:
    """Reduce running text to plain words and ``. , ? !`` (see the module docstring).

    Sentence boundaries survive as ``.``, ``?`` or ``!`` followed by a space, so the result can be
    split with :func:`split_sentences`.
    """
    text = to_ascii(text)
    text = _fold_abbreviations(text)
    text = re.sub(r"\s*--+\s*|\s+-\s+", ", ", text)
    text = text.replace("&", " and ").replace("+", " plus ").replace("=", " equals ")
    text = _spell_numbers(text)
    text = re.sub(r"[;:]", ",", text)
    text = re.sub(r"[()\[\]{}\"]", " ", text)
    text = re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", text)
    text = re.sub(r"(?<![A-Za-z])'|'(?![A-Za-z])", " ", text)
    text = re.sub(r"\.{2,}", ".", text)
    text = re.sub(r"[^A-Za-z'.,?! ]", " ", text)
    text = re.sub(r"\s+([.,?!])", r"\1", text)
    text = re.sub(r"([.,?!])[.,?!]+", r"\1", text)
    text = re.sub(r"(?<=[.,?!])(?=[A-Za-z])", " ", text)
    text = re.sub(r"^[\s.,?!]+", "", text)
    return re.sub(r"\s+", " ", text).strip()


def split_sentences(normalised: str, min_words: int = 1) -> list[str]:
    """Split normalised text at ``. ? !``; every returned sentence ends in one of them.

    Sentences with fewer than ``min_words`` words are dropped (headlines, stray fragments).
    """
    sentences = []
    for piece in re.findall(r"[^.?!]+[.?!]?", normalised):
        sentence = piece.strip(" ,")
        if not sentence:
            continue
        if sentence[-1] not in ".?!":
            sentence += "."
        sentence = re.sub(r",(?=[.?!]$)", "", sentence)
        if len(words_of(sentence)) >= min_words:
            sentences.append(sentence[0].upper() + sentence[1:])
    return sentences


def words_of(sentence: str) -> list[str]:
    """The words of a normalised sentence, punctuation removed (``"Hill Top's fire."`` ->
    ``["Hill", "Top's", "fire"]``); this is how the aligner and the data pipeline count words."""
    return WORD_PATTERN.findall(sentence)
