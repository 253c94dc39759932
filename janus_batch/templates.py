"""Prompt templates over a dataset item's columns and metadata.

    template = Template.parse("Describe this photo. Its alt text was: {caption}", "params.prompt")
    template.render({"caption": "a dog on a beach", "key": "000042"})

`{name}` is replaced by the item's field `name` (a column of a CSV row, a key of a WebDataset
sample's `json`, `txt` for its text member, `key` for the dataset key); `{{` and `}}` are
literal braces. Only plain names are allowed: no attribute access, indexing, conversions or
format specs (a template is user text; `str.format` would let it reach into Python objects).
A field the item does not have fails that item alone, naming the field.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


class TemplateError(ValueError):
    """A template that cannot be parsed, or a field an item does not have."""


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and field names, in order."""

    parts: tuple[tuple[str, str | None], ...]
    """(literal text, field name or None) pairs."""

    @classmethod
    def parse(cls, text: str, field: str = "template") -> Template:
        """Parse `text`; TemplateError naming `field` if a placeholder is not a plain name."""
        try:
            pieces = list(string.Formatter().parse(text))
        except ValueError as exc:  # "Single '}' encountered", "expected '}'"
            raise TemplateError(
                f"{field}: {exc} (write {{{{ and }}}} for literal braces)"
            ) from None
        parts: list[tuple[str, str | None]] = []
        for literal, name, spec, conversion in pieces:
            if name is None:
                parts.append((literal, None))
                continue
            if spec or conversion or not NAME_RE.fullmatch(name):
                shown = (
                    name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
                )
                raise TemplateError(
                    f"{field}: '{{{shown}}}' is not a field name (letters, digits, _ and -; "
                    "write {{ and }} for literal braces)"
                )
            parts.append((literal, name))
        return cls(tuple(parts))

    @property
    def fields(self) -> tuple[str, ...]:
        """The field names the template uses."""
        return tuple(name for _, name in self.parts if name is not None)

    def render(self, values: Mapping[str, Any]) -> str:
        """The text with each field replaced by `values[name]` (None as an empty string, other
        non-strings as JSON-like text); TemplateError naming a missing field."""
        out: list[str] = []
        for literal, name in self.parts:
            out.append(literal)
            if name is None:
                continue
            if name not in values:
                raise TemplateError(f"the prompt template uses {{{name}}}, which this item lacks")
            value = values[name]
            out.append("" if value is None else value if isinstance(value, str) else str(value))
        return "".join(out)
