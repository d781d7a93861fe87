"""Text files' bytes to text: the encoding is detected, never assumed.

Order: a byte-order mark (UTF-32 before UTF-16: their little-endian marks share two bytes), then strict
UTF-8, then charset_normalizer for legacy encodings (cp1252, Shift-JIS, GB18030, KOI8-R, UTF-16 without
a mark...). Pure functions: the parser (``tasks.ingest.parsing``) calls ``decode_text`` before
unstructured sees a file, and turns ``UndecodableText`` into the file's quarantine reason.

Random bytes must not become "text": charset_normalizer finds no encoding for them, and any decoded text
with a NUL or more than 5 % control characters is refused as binary.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from charset_normalizer.models import CharsetMatch

# UTF-32 LE's mark starts with UTF-16 LE's: the longer marks are tried first.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
MAX_CONTROL_SHARE = 0.05
# C0 controls other than tab, newline, vertical tab, form feed and carriage return; DEL; C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")
# DOS, Mac and HP code pages: charset_normalizer ties them with the Windows ones on short Western text
# (cp1252 "café" read as cp775 "cafķ"); they win only when nothing common decodes the bytes as well.
_RARE = re.compile(r"^(cp[4-9]\d\d|mac_|hp_)")


class UndecodableText(ValueError):
    """No encoding turns these bytes into plausible text; the message says why."""


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str  # the codec that decoded it, e.g. "utf-8", "utf-16-le", "cp1252"


def decode_text(data: bytes) -> Decoded:
    """The text of a text file's bytes (without its byte-order mark); raises ``UndecodableText``."""
    decoded = _by_bom(data) or _as_utf8(data) or _detected(data)
    if decoded is None:
        raise UndecodableText("no encoding decodes it (binary content?)")
    _refuse_controls(decoded)
    return decoded


def _by_bom(data: bytes) -> Decoded | None:
    for bom, encoding in BOMS:
        if data.startswith(bom):
            try:
                return Decoded(data[len(bom):].decode(encoding), encoding)
            except UnicodeDecodeError as exc:
                raise UndecodableText(f"starts with a {encoding} byte-order mark but is not {encoding}: "
                                      f"{exc.reason} at byte {exc.start + len(bom)}") from None
    return None


def _as_utf8(data: bytes) -> Decoded | None:
    """Strict UTF-8, unless it holds NUL: UTF-16 without a mark is valid UTF-8 full of NULs."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return Decoded(text, "utf-8") if "\x00" not in text else None


def _detected(data: bytes) -> Decoded | None:
    from charset_normalizer import from_bytes

    match = best_match(list(from_bytes(data)))
    if match is None:
        return None
    # a match lists the code pages that decode these bytes to the very same text
    return Decoded(str(match), "cp1252" if "cp1252" in match.could_be_from_charset else match.encoding)


def best_match(matches: list[CharsetMatch]) -> CharsetMatch | None:
    """charset_normalizer's least chaotic match, ties broken towards common code pages.

    Among equally clean decodings: drop DOS/Mac/HP code pages unless only they remain, keep the best
    language coherence, then prefer a match that reads the bytes as cp1252 does (the web's default for
    legacy Western text, WHATWG's reading of latin-1). On short text, charset_normalizer's own order
    among single-byte Latin pages is close to arbitrary.
    """
    if not matches:
        return None
    cleanest = min(m.chaos for m in matches)
    tied = [m for m in matches if m.chaos <= cleanest]
    common = [m for m in tied if not _RARE.match(m.encoding)] or tied
    coherent = max(m.coherence for m in common)
    best = [m for m in common if m.coherence >= coherent]
    return next((m for m in best if "cp1252" in m.could_be_from_charset), best[0])


def _refuse_controls(decoded: Decoded) -> None:
    text = decoded.text
    if "\x00" in text:
        raise UndecodableText(f"NUL characters after decoding as {decoded.encoding} (binary content?)")
    controls = len(_CONTROL.findall(text))
    if controls > len(text) * MAX_CONTROL_SHARE:
        raise UndecodableText(f"{controls / len(text):.0%} control characters after decoding as "
                              f"{decoded.encoding} (binary content?)")
