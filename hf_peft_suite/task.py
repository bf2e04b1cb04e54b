"""A classification task as text-to-text: the input template (columns -> the text the encoder reads) and the label
map (label values -> the words the decoder writes).

**Input templates.** ``--input_template "rte sentence1: {sentence1} sentence2: {sentence2}"`` names columns in braces;
everything else is the template's own text, kept as written (``{{`` and ``}}`` are literal braces).
``--source_prefix "sst2 sentence: "`` is the one-column shorthand, ``PREFIX{text_column}`` (the prefix of
transformers' ``run_summarization.py``). Without either, the input is ``{text_column}`` alone: tokenized and truncated
at the end exactly as before templates existed.

Truncation to ``max_length`` tokens never cuts the template's own words. When the filled template is too long, the
fields are shortened *longest first*: each field's token count is capped at one common level, the largest that fits
(what a tokenizer's ``longest_first`` strategy does for a text pair, removing tokens from the longer one until they
fit), each field is cut after its last kept token (by the tokenizer's character offsets), and the whole text is
tokenized again. Where joining the pieces changes the tokenization by a token or two, the budget shrinks by the excess
and the cut is redone; the template with empty fields always fits (checked once, :meth:`InputTemplate.check_fits`).

**Label maps.** ``--label_words`` is either the words in class-id order (``negative positive``) or ``VALUE=WORD``
pairs (``Negative=negative Positive=positive``, ``0=no 1=yes``, a ClassLabel's names ``entailment=yes
not_entailment=no``): :func:`label_map_pairs` reads which; :func:`hf_peft_suite.data.resolve_label_words` applies it
to the data.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class InputTemplate:
    """Literal text and column names, in order: ``pieces`` is ``((literal, column or None), ...)``."""

    pieces: tuple[tuple[str, str | None], ...]

    # ------------------------------------------------------------------------------------------------- building
    @classmethod
    def parse(cls, template: str) -> "InputTemplate":
        """The template of ``--input_template`` (``{column}`` for each column, ``{{``/``}}`` for literal braces)."""
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as error:
            raise UsageError(
                f"--input_template {template!r} cannot be read ({error}); write each column as {{name}} and a literal "
                f"brace as {{{{ or }}}}"
            ) from None
        pieces = []
        for literal, column, format_spec, conversion in parsed:
            if column is not None and (format_spec or conversion):
                written = "{" + column + (f"!{conversion}" if conversion else "") + (
                    f":{format_spec}" if format_spec else "") + "}"
                raise UsageError(f"--input_template {template!r}: {written} is not a column; write each column as "
                                 f"{{name}}, with nothing after the name")
            pieces.append((literal, column))
        return cls(tuple(pieces))

    @classmethod
    def single(cls, column: str, prefix: str = "") -> "InputTemplate":
        """``PREFIX{column}``: ``--source_prefix`` (the prefix kept as written, braces included), or no prefix."""
        return cls(((prefix, column),))

    def for_column(self, column: str) -> "InputTemplate":
        """This one-column template reading ``column`` instead (its own text unchanged)."""
        (only,) = self.columns
        return InputTemplate(tuple((literal, column if name == only else name) for literal, name in self.pieces))

    # ---------------------------------------------------------------------------------------------- describing
    @property
    def columns(self) -> list[str]:
        """The columns the template names, each once, in order of first use."""
        return list(dict.fromkeys(column for _, column in self.pieces if column is not None))

    @property
    def text(self) -> str:
        """The template as ``--input_template`` writes it (``{column}``, literal braces doubled)."""
        escape = str.maketrans({"{": "{{", "}": "}}"})
        return "".join(literal.translate(escape) + ("" if column is None else "{" + column + "}")
                       for literal, column in self.pieces)

    @property
    def plain(self) -> bool:
        """One column and no text of its own: the input is the column, truncated at the end as it always was."""
        return len(self.pieces) == 1 and self.pieces[0][0] == "" and self.pieces[0][1] is not None

    def render(self, values: dict[str, str]) -> str:
        """The template with each column's value in place."""
        return "".join(literal + ("" if column is None else values[column]) for literal, column in self.pieces)

    def example(self, values: dict[str, str] | None = None) -> str:
        """The template filled with ``values``, or with ``<column>`` where a value is not given."""
        values = values or {}
        return self.render({column: values.get(column, f"<{column}>") for column in self.columns})

    # ------------------------------------------------------------------------------------------------- checking
    def check_columns(self, available: list[str], where: str) -> None:
        """Every column the template names must be in ``available`` (one ``UsageError`` listing them, if not)."""
        if "" in self.columns:
            raise UsageError(f"--input_template {self.text!r} has an empty {{}}; name a column in each pair of braces "
                             f"(columns of {where}: {available})")
        if not self.columns:
            raise UsageError(f"--input_template {self.text!r} names no column; put each column in braces, e.g. "
                             f"'sst2 sentence: {{sentence}}' (columns of {where}: {available})")
        missing = [column for column in self.columns if column not in available]
        if missing:
            raise UsageError(f"--input_template names {'columns' if len(missing) > 1 else 'a column'} "
                             f"{', '.join(map(repr, missing))} that {where} does not have (columns: {available}); "
                             f"name each column as it is written there")

    def overhead(self, tokenizer) -> int:
        """Tokens of the template with every column empty (its own words and the special tokens)."""
        return len(tokenizer(self.render({column: "" for column in self.columns})).input_ids)

    def check_fits(self, tokenizer, max_length: int) -> None:
        """The template's own words must leave at least one token per column within ``max_length``."""
        if self.plain:
            return
        own = self.overhead(tokenizer)
        if max_length - own < len(self.columns):
            raise UsageError(
                f"--input_template {self.text!r} takes {own} tokens on its own, leaving {max(max_length - own, 0)} of "
                f"--max_source_length {max_length} for its {len(self.columns)} columns; raise --max_source_length or "
                f"shorten the template"
            )

    # ------------------------------------------------------------------------------------------------- encoding
    def encode(self, fields: dict[str, list[str]], tokenizer, max_length: int):
        """``input_ids`` and ``attention_mask`` of each row (``fields``: column -> its values, already cleaned),
        at most ``max_length`` tokens each, the template's own words kept whole (see the module docstring)."""
        if self.plain:
            return tokenizer(fields[self.columns[0]], max_length=max_length, truncation=True)
        rows = [dict(zip(fields, values)) for values in zip(*fields.values())]
        input_ids = tokenizer([self.render(row) for row in rows]).input_ids
        for index, ids in enumerate(input_ids):
            if len(ids) > max_length:
                input_ids[index] = self._fit(rows[index], tokenizer, max_length)
        return {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]}

    def _fit(self, row: dict[str, str], tokenizer, max_length: int) -> list[int]:
        """The ids of the template filled with ``row``'s fields shortened longest first to fit ``max_length``."""
        uses = {column: sum(name == column for _, name in self.pieces) for column in self.columns}
        pieces = {column: tokenizer(row[column], add_special_tokens=False,
                                    return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)))
                  for column in self.columns}
        lengths = {column: len(encoded.input_ids) for column, encoded in pieces.items()}
        budget = max_length - self.overhead(tokenizer)
        while budget > 0:
            kept = longest_first(lengths, uses, budget)
            ids = tokenizer(self.render({column: _cut(row[column], pieces[column], kept[column], tokenizer)
                                         for column in self.columns})).input_ids
            if len(ids) <= max_length:
                return ids
            budget -= len(ids) - max_length  # joining the pieces took a token or two more: cut that much deeper
        return tokenizer(self.render({column: "" for column in self.columns})).input_ids  # fits: check_fits


def longest_first(lengths: dict[str, int], uses: dict[str, int], budget: int) -> dict[str, int]:
    """How many tokens of each field to keep so that ``sum(uses * kept) <= budget``, shortening the longest first.

    Every field keeps ``min(length, cap)`` tokens for the largest cap that fits; the tokens the cap leaves over go,
    one each, to the longest fields that were cut. ``uses``: how often the template names each field.
    """
    def cost(cap: int) -> int:
        return sum(uses[column] * min(length, cap) for column, length in lengths.items())

    if cost(max(lengths.values(), default=0)) <= budget:
        return dict(lengths)
    low, high = 0, max(lengths.values())
    while low < high:  # the largest cap whose cost fits the budget
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cost(middle) <= budget else (low, middle - 1)
    kept, spare = {column: min(length, low) for column, length in lengths.items()}, budget - cost(low)
    for column in sorted(lengths, key=lambda name: -lengths[name]):
        if lengths[column] > low and uses[column] <= spare:
            kept[column] += 1
            spare -= uses[column]
    return kept


def _cut(text: str, encoded, keep: int, tokenizer) -> str:
    """``text`` up to the end of its ``keep``-th token (by the fast tokenizer's character offsets, else decoded)."""
    if keep >= len(encoded.input_ids):
        return text
    if keep <= 0:
        return ""
    if "offset_mapping" in encoded:
        return text[:encoded["offset_mapping"][keep - 1][1]]
    return tokenizer.decode(encoded.input_ids[:keep], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------------- label maps
def label_map_pairs(label_words: list[str] | None) -> dict[str, str] | None:
    """``{VALUE: WORD}`` when ``--label_words`` is given as ``VALUE=WORD`` pairs (in the order given), ``None`` when it
    is the words alone (or not given). Mixing the two forms, an empty value or word, or a value given twice is a
    :class:`UsageError`. A pair splits at its first ``=``, so a word may hold one but a value may not."""
    if not label_words:
        return None
    paired = ["=" in item for item in label_words]
    if not any(paired):
        return None
    if not all(paired):
        alone = [item for item, pair in zip(label_words, paired) if not pair]
        raise UsageError(
            f"--label_words mixes VALUE=WORD pairs with words alone ({', '.join(map(repr, alone))}); give either the "
            f"words in class-id order (negative positive) or a pair for every label value (Negative=negative "
            f"Positive=positive)"
        )
    pairs: dict[str, str] = {}
    for item in label_words:
        value, _, word = item.partition("=")
        if not value.strip() or not word.strip():
            raise UsageError(f"--label_words {item!r}: give a label value and its word on either side of '=', e.g. "
                             f"0=no or Positive=positive")
        if value in pairs:
            raise UsageError(f"--label_words gives the label value {value!r} twice ({pairs[value]!r} and {word!r}); "
                             f"give each value one word")
        pairs[value] = word
    return pairs


def task_text(input_template: str | None, label_map: dict[str, str] | None) -> str:
    """A run's task in Markdown: ``input `sst2 sentence: {sentence}`; labels negative → `negative`, ...``."""
    parts = [f"input `{input_template}`"] if input_template else []
    if label_map:
        parts.append("labels " + ", ".join(f"{value} → `{word}`" for value, word in label_map.items()))
    return "; ".join(parts)
