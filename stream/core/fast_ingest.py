"""The fast path of ingest's JSON parsing: msgspec parses the common message in C.

`ingest.parse_json` is the reference: Python's parser with hooks that close each of its
leniencies (duplicate keys, NaN, lone surrogates, huge integers), about half of what the
worker spends on a message. `parse` returns the very same document, parsed by msgspec in a
fraction of that time, for the messages it can vouch for, and `None` ("not sure") for all
others, which then take the reference parser. It never rejects, so every reason and message
stays the reference path's, and the pydantic models stay the only validation (nothing here
mirrors a field, so nothing can drift from the models or the JSON Schemas).

msgspec already refuses what the reference refuses in these cases: invalid UTF-8, a byte order
mark, NaN/Infinity, a lone surrogate escape, control characters in strings, trailing text. The
rest is closed by declining:

- a repeated member (msgspec keeps the last, the reference refuses): the number of `"` bytes in
  the text must equal 2 per key plus 2 per string value of the parsed object. Every string has
  two delimiting quotes and an escaped quote only adds to the count, so equality proves that
  no member repeats (a message with an escaped quote in a string is merely declined);
- anything but a flat object of strings, integers within 64 bits, booleans and nulls: nested
  values could hide repeated members deeper down, the reference reads an integer of more than
  64 digits as infinity, and floats and deep nesting are the reference's business.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

#: A flat object of strings, integers msgspec holds in 64 bits (the reference reads one of more
#: than 64 digits as infinity: far beyond), booleans and nulls; anything else is declined.
_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_DECODER = msgspec.json.Decoder(dict[str, str | _Int | bool | None])


def parse(value: bytes) -> dict[str, Any] | None:
    """The JSON object in `value`, equal (same keys in the same order, same values of the same
    types) to what `ingest.parse_json` returns, or None when not sure (never a verdict)."""
    try:
        doc = _DECODER.decode(value)
    except Exception:  # not JSON msgspec takes (or not UTF-8): the reference says why
        return None
    if 2 * (len(doc) + list(map(type, doc.values())).count(str)) != value.count(b'"'):
        return None  # a repeated member
    return doc
