"""The hand-written wire bytes of EntityFeatures equal what the protobuf API builds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saiki.feature_repo.spec import FEATURE_NAMES
from saiki.serving.wire import EntityEncoder, varint
from saiki.v1 import features_pb2


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16_383, 16_384, 2**31, 2**62])
def test_varints_read_back(value: int) -> None:
    from google.protobuf.internal.decoder import _DecodeVarint  # type: ignore[attr-defined]

    assert _DecodeVarint(varint(value), 0) == (value, len(varint(value)))


def test_encoded_entities_parse_into_the_messages_the_api_builds() -> None:
    rng = np.random.default_rng(2)
    ids = ["i1", "ü-ñ-商品", "x" * 128, "i1", "u" * 57]
    values = rng.normal(0, 1e6, (len(ids), len(FEATURE_NAMES)))
    values[1, 3] = -0.0
    values[2, 0] = math.inf
    values[3, 14] = 1e-300
    values[4] = 0.0
    parsed = features_pb2.GetFeaturesResponse.FromString(
        b"".join(EntityEncoder(FEATURE_NAMES).encode(ids, values))
    )
    built = features_pb2.GetFeaturesResponse()
    for entity_id, row in zip(ids, values.tolist(), strict=True):
        built.entities.add(id=entity_id, values=dict(zip(FEATURE_NAMES, row, strict=True)))
    assert parsed == built
    assert [e.id for e in parsed.entities] == ids
    assert dict(parsed.entities[2].values)[FEATURE_NAMES[0]] == math.inf
    assert EntityEncoder(FEATURE_NAMES).encode([], np.empty((0, len(FEATURE_NAMES)))) == []


def test_a_row_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        EntityEncoder(FEATURE_NAMES).encode(["a"], np.zeros((1, 3)))
