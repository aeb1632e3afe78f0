"""Public keys as people pass them (`--public-key`): the signer's own loads back, a mistyped
one is refused with the reason, never decoded leniently into another key."""

from __future__ import annotations

import base64

import pytest

from shared.eventstore.checkpoints import CheckpointSigner, InvalidPublicKey, load_public_key
from shared.settings import DEV_SIGNING_KEY


@pytest.mark.parametrize("suffix", ["", "\n"], ids=["as printed", "with a newline"])
def test_the_signers_public_key_loads_back(suffix: str) -> None:
    signer = CheckpointSigner(DEV_SIGNING_KEY)
    loaded = load_public_key(signer.public_key_b64() + suffix)
    assert loaded == signer.public_key


@pytest.mark.parametrize(("typed", "problem"), [
    ("abc", "not base64"),
    (base64.b64encode(bytes(31)).decode(), "32 bytes in base64, not 31"),
    ("AAAA*AAA", "not base64")])
def test_a_mistyped_public_key_is_refused_with_the_reason(typed: str, problem: str) -> None:
    with pytest.raises(InvalidPublicKey, match=problem):
        load_public_key(typed)
