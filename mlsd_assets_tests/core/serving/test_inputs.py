"""Request parsing: a v2 header validated once is reused only for requests it truly describes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlsd_assets.core.serving.server import inputs
from mlsd_assets.core.serving.server.inputs import InputError, Limits, RequestParser

SHAPE = (32, 32, 3)


def header(n: int, request_id: str | None = None) -> bytes:
    doc: dict = {
        "inputs": [
            {"name": "images", "shape": [n, *SHAPE], "datatype": "UINT8", "parameters": {"binary_data_size": n * 3072}}
        ],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }
    if request_id is not None:
        doc["id"] = request_id
    return json.dumps(doc).encode()


def test_a_repeated_header_is_parsed_once_and_each_request_keeps_its_own_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parses = []
    real_parse = inputs.parse_header
    monkeypatch.setattr(inputs, "parse_header", lambda *args: parses.append(args) or real_parse(*args))
    parser = RequestParser("images", SHAPE, Limits())
    rng = np.random.default_rng(0)
    head = header(2)
    batches = [rng.integers(0, 256, (2, *SHAPE), dtype=np.uint8) for _ in range(3)]
    for batch in batches:
        request = parser.parse(head + batch.tobytes(), str(len(head)))
        np.testing.assert_array_equal(request.images, batch)
        assert request.outputs == ("logits",) and request.binary_outputs == frozenset({"logits"})
    assert len(parses) == 1

    with pytest.raises(InputError, match="binary_data_size is 6144 but 6143 bytes follow") as error:
        parser.parse(head + batches[0].tobytes()[:-1], str(len(head)))  # same header, short body: validated anew
    assert error.value.status == 400 and len(parses) == 2

    other = header(2, request_id="req-7")
    assert parser.parse(other + batches[1].tobytes(), str(len(other))).request_id == "req-7"
    assert parser.parse(head + batches[1].tobytes(), str(len(head))).request_id is None


def test_the_remembered_headers_stay_bounded() -> None:
    parser = RequestParser("images", SHAPE, Limits())
    pixels = np.zeros((1, *SHAPE), np.uint8).tobytes()
    for i in range(parser.max_entries * 2 + 5):
        head = header(1, request_id=str(i))  # every request its own id: its own header
        assert parser.parse(head + pixels, str(len(head))).request_id == str(i)
    assert 0 < len(parser._known) <= parser.max_entries
