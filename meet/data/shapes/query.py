"""Parsing typed queries: free text in the caption templates' grammar -> caption facts.

Lets a user type "a big red circle left of a star" and get exact ground truth for it
(:func:`parse_caption` + :func:`meet.data.shapes.relevance_matrix`).
"""

from __future__ import annotations

from meet.data.shapes.vocab import COLOURS, MAX_OBJECTS, NOUNS, SHAPES, SIZE_WORDS, tokenize

_SHAPE_WORDS = {shape: shape for shape in SHAPES}
_COLOUR_WORDS = {colour: colour for colour in COLOURS} | {"grey": "gray"}
_SIZE_WORD_MAP = {word: size for size, words in SIZE_WORDS.items() for word in words}
_GENERIC_NOUNS = set(NOUNS)
_PLURAL_NOUNS = {noun + "s" for noun in NOUNS}
_NUMBERS = {"one": 1, "two": 2, "three": 3}
_RELATION_WORDS = (
    (("to", "the", "left", "of"), "left_of"), (("on", "the", "left", "of"), "left_of"),
    (("left", "of"), "left_of"), (("to", "the", "right", "of"), "right_of"),
    (("on", "the", "right", "of"), "right_of"), (("right", "of"), "right_of"),
    (("above",), "above"), (("over",), "above"), (("below",), "below"),
    (("under",), "below"), (("beneath",), "below"), (("underneath",), "below"))
_REPHRASE_MARKERS = {"there", "that", "which", "with", "big", "little", "tiny"}


class _NoParse(Exception):
    """The text leaves the templates' grammar."""


class _Parser:
    """Recursive descent over word tokens for the caption grammar::

        caption  := ["there" ("is"|"are"|"s")] ["only"|"just"] (count | body) ["alone"|"only"]
                    ["in" "the" ("scene"|"image"|"picture")]
        count    := ("a" "single" | "one" | "two" | "three") generic-noun[s]
        body     := np REL np  |  np (("and" | "with" | ",") np)*
        np       := [article] adjective* (shape | generic-noun) ["that"|"which" "is" adjectives]
                  | "something" adjective* ["that" "is" adjectives]
    """

    def __init__(self, words: list[str]):
        self.words, self.at = words, 0

    def peek(self, ahead: int = 0) -> str | None:
        index = self.at + ahead
        return self.words[index] if index < len(self.words) else None

    def accept(self, *sequence: str) -> bool:
        if tuple(self.words[self.at:self.at + len(sequence)]) == sequence:
            self.at += len(sequence)
            return True
        return False

    def _adjective(self, word: str | None) -> bool:
        return word in _COLOUR_WORDS or word in _SIZE_WORD_MAP

    def _set_adjective(self, pattern: dict, word: str) -> None:
        key, value = (("colour", _COLOUR_WORDS[word]) if word in _COLOUR_WORDS
                      else ("size", _SIZE_WORD_MAP[word]))
        if pattern[key] is not None and pattern[key] != value:
            raise _NoParse(f"two {key}s for one object")
        pattern[key] = value
        self.at += 1

    def count(self) -> int | None:
        """A number word directly followed by a generic noun that ends the phrase."""
        start = self.at
        if self.accept("a", "single"):
            number = 1
        elif self.peek() in _NUMBERS:
            number = _NUMBERS[self.peek()]
            self.at += 1
        else:
            return None
        if self.peek() in _GENERIC_NOUNS or self.peek() in _PLURAL_NOUNS:
            self.at += 1
            if self.peek() in (None, "in", "alone", "only"):
                return number
        self.at = start  # "a single red circle": an article, not a count
        return None

    def noun_phrase(self) -> dict:
        pattern = {"shape": None, "colour": None, "size": None}
        for article in (("a", "single"), ("a",), ("an",), ("one",), ("the",)):
            if self.accept(*article):
                break
        if self.accept("something"):
            while self._adjective(self.peek()):
                self._set_adjective(pattern, self.peek())
        else:
            while self._adjective(self.peek()):
                self._set_adjective(pattern, self.peek())
            head = self.peek()
            if head in _SHAPE_WORDS:
                pattern["shape"] = _SHAPE_WORDS[head]
            elif head not in _GENERIC_NOUNS:
                raise _NoParse(f"expected a shape or noun, got {head!r}")
            self.at += 1
        if (self.peek() in ("that", "which") and self.peek(1) == "is"
                and self._adjective(self.peek(2))):
            self.at += 2
            self._set_adjective(pattern, self.peek())
            # "... that is small and red": take "and ADJ" unless ADJ starts a new phrase
            while (self.peek() == "and" and self._adjective(self.peek(1))
                   and not (self._adjective(self.peek(2)) or self.peek(2) in _SHAPE_WORDS
                            or self.peek(2) in _GENERIC_NOUNS)):
                self.at += 1
                self._set_adjective(pattern, self.peek())
        return pattern

    def relation(self) -> str | None:
        start = self.at
        if not (self.accept("that", "is") or self.accept("which", "is")):
            self.accept("is")
        for sequence, name in _RELATION_WORDS:
            if self.accept(*sequence):
                return name
        self.at = start
        return None

    def caption(self) -> dict:
        if not (self.accept("there", "is") or self.accept("there", "are")):
            self.accept("there", "s")
        exact = self.accept("only") or self.accept("just")
        count = self.count()
        patterns, relation, joiners = [], None, set()
        if count is None:
            patterns.append(self.noun_phrase())
            relation = self.relation()
            if relation is not None:
                patterns.append(self.noun_phrase())
            while relation is None and self.peek() not in (None, "alone", "only", "in"):
                joiner = "with" if self.accept("with") else ("and" if self.accept("and") else ",")
                joiners.add(joiner)
                patterns.append(self.noun_phrase())
        exact = self.accept("alone") or self.accept("only") or exact
        if self.accept("in", "the"):
            if not (self.accept("scene") or self.accept("image") or self.accept("picture")):
                raise _NoParse("unknown location")
        if self.peek() is not None:
            raise _NoParse(f"unexpected {self.peek()!r}")
        if "with" in joiners and len(joiners) > 1 or len(patterns) > MAX_OBJECTS:
            raise _NoParse("mixed or too many objects")
        # "only two shapes": the count already says how many; exact would demand 0
        exact = (exact or bool(joiners - {"with"})) and count is None
        relation_facts = (None if relation is None
                          else {"subject": 0, "object": 1, "relation": relation})
        return {"family": self.family(patterns, relation, count, exact), "objects": patterns,
                "relation": relation_facts, "count": count, "exact": exact}

    def family(self, patterns: list[dict], relation: str | None, count: int | None,
               exact: bool) -> str:
        """The template family the text most likely came from (``rephrased`` and
        ``one_object`` overlap, e.g. "a small hexagon")."""
        if count is not None:
            return "count"
        if relation is not None:
            return "relation"
        if exact:
            return "all_objects"
        if len(patterns) == 1 and sum(v is not None for v in patterns[0].values()) == 1:
            return "attribute"
        return "rephrased" if _REPHRASE_MARKERS & set(self.words) else "one_object"


def parse_caption(text: str) -> dict | None:
    """Facts of a free-text query in the templates' grammar, or None.

    Any case and punctuation; synonyms (big/large, small/little/tiny, shape/object/
    thing, grey). "a red circle and a blue star" lists *all* objects (``exact``), as
    the ``all_objects`` captions do; "a red circle with a blue star" does not; "only"/
    "just"/"alone" make a single object exact. Example: ``parse_caption("Something
    purple!")`` -> one pattern ``{"colour": "purple"}``.
    """
    words = tokenize(text)
    if not words:
        return None
    try:
        return _Parser(words).caption()
    except _NoParse:
        return None
