"""Keys as settings take them: base64 text."""

from __future__ import annotations

import base64


def other_spelling(key: str) -> str:
    """The same 32 bytes in other base64 text: the last character's two spare bits set
    (decoders ignore them)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    spelled = key[:-2] + alphabet[alphabet.index(key[-2]) ^ 1] + key[-1]
    assert spelled != key and base64.b64decode(spelled) == base64.b64decode(key)
    return spelled
