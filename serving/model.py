"""The ranking model: P(click) from merged features plus hashed id embeddings.

Inputs per (user, item) pair: the 15 user and 15 item features of the spec (the same
merged batch + speed values GetFeatures serves, or a training set's point-in-time
columns), and hashed embeddings of the user id, the item id and the device. Hashing
makes unseen ids work (they land in a bucket, usually one no training row touched,
whose embedding stays near zero). The interaction ``user ⊙ item`` lets the model learn
tastes that counts alone cannot show.

The quantised form (int8 weights for the Linear layers and the embedding tables) is
made by :func:`quantise`; it is the only place that touches ``torch.ao``.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from saiki.feature_repo.spec import FEATURE_NAMES

DENSE_COLUMNS = tuple(f"{entity}_{name}" for entity in ("user", "item") for name in FEATURE_NAMES)
# Counts and sums span orders of magnitude: the model sees log1p of them; ratios as they are.
_LOG_SCALED = np.array(
    [not name.split("_", 1)[1].startswith("ctr_") for name in DENSE_COLUMNS], dtype=bool
)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters: stored with every version, to rebuild it exactly."""

    user_buckets: int = 1 << 15
    item_buckets: int = 1 << 13
    device_buckets: int = 64
    dim: int = 16
    hidden: int = 64

    def as_dict(self) -> dict[str, int]:
        """JSON-friendly form."""
        return asdict(self)


def bucket(values: Sequence[str | None], buckets: int) -> npt.NDArray[np.int64]:
    """Stable hash buckets of ids (crc32: the same in every process and version)."""
    return np.fromiter(
        (zlib.crc32((v or "").encode()) % buckets for v in values), np.int64, len(values)
    )


def dense_inputs(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Raw feature values (rows × DENSE_COLUMNS) as the model's dense input."""
    out = np.array(values, dtype=np.float64)
    out[:, _LOG_SCALED] = np.log1p(np.maximum(out[:, _LOG_SCALED], 0.0))
    return out.astype(np.float32)


class RankingModel(nn.Module):  # type: ignore[misc]  # torch is untyped here
    """Embeddings + MLP click model (scriptable)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dense = len(DENSE_COLUMNS)
        self.user = nn.EmbeddingBag(config.user_buckets, config.dim, mode="sum")
        self.item = nn.EmbeddingBag(config.item_buckets, config.dim, mode="sum")
        self.device = nn.EmbeddingBag(config.device_buckets, 4, mode="sum")
        self.register_buffer("mean", torch.zeros(dense))
        self.register_buffer("scale", torch.ones(dense))
        width = dense + 3 * config.dim + 4
        # Dynamic int8 quantisation uses one scale for a Linear's whole input: without a
        # per-column normalisation the small embedding products round to nothing (held-out
        # AUC fell by 0.06). The batch norm puts every input column on the same scale.
        self.inputs = nn.BatchNorm1d(width)
        self.hidden = nn.Linear(width, config.hidden)
        self.hidden2 = nn.Linear(config.hidden, config.hidden // 2)
        self.out = nn.Linear(config.hidden // 2, 1)
        for table in (self.user, self.item, self.device):
            nn.init.normal_(table.weight, std=0.01)

    def forward(
        self,
        dense: torch.Tensor,
        users: torch.Tensor,
        items: torch.Tensor,
        devices: torch.Tensor,
    ) -> torch.Tensor:
        """P(click) for each row."""
        offsets = torch.arange(users.shape[0], dtype=torch.long)
        user = self.user(users, offsets)
        item = self.item(items, offsets)
        device = self.device(devices, offsets)
        normalised = (dense - self.mean) / self.scale
        x = self.inputs(torch.cat([normalised, user, item, device, user * item], dim=1))
        x = torch.relu(self.hidden(x))
        x = torch.relu(self.hidden2(x))
        return torch.sigmoid(self.out(x)).squeeze(1)


def model_inputs(
    config: ModelConfig,
    dense: npt.NDArray[np.float64],
    users: Sequence[str],
    items: Sequence[str],
    devices: Sequence[str | None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tensors ``forward`` takes, from raw features and ids."""
    return (
        torch.from_numpy(dense_inputs(dense)),
        torch.from_numpy(bucket(users, config.user_buckets)),
        torch.from_numpy(bucket(items, config.item_buckets)),
        torch.from_numpy(bucket(devices, config.device_buckets)),
    )


def request_inputs(
    config: ModelConfig,
    dense: npt.NDArray[np.float64],
    user_id: str,
    items: Sequence[str],
    device_id: str | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``model_inputs`` for one request's candidates, equal to it: the one user and device
    bucketed once, not once per candidate (0.4 ms of a 1,000-candidate call)."""
    count = len(items)
    user = bucket([user_id], config.user_buckets)[0]
    device = bucket([device_id], config.device_buckets)[0]
    return (
        torch.from_numpy(dense_inputs(dense)),
        torch.from_numpy(np.full(count, user, dtype=np.int64)),
        torch.from_numpy(bucket(items, config.item_buckets)),
        torch.from_numpy(np.full(count, device, dtype=np.int64)),
    )


def quantise(model: RankingModel) -> Any:
    """int8 dynamic quantisation of the Linear layers and embedding tables, scripted.

    torch 2.13 marks ``torch.ao.quantization`` and ``torch.jit`` deprecated, but their
    successors cannot yet export dynamically quantised modules (``torch.export`` refuses
    them; torchao's CPU path measured slower for this model); the
    warnings are silenced here, deliberately, and this is the one function to change when
    the model moves to torchao.
    """
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float_qparams_weight_only_qconfig,
        quantize_dynamic,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantised = quantize_dynamic(
            model.eval(),
            {
                nn.Linear: default_dynamic_qconfig,
                nn.EmbeddingBag: float_qparams_weight_only_qconfig,
            },
            dtype=torch.qint8,
        )
        return torch.jit.script(quantised)


def script(model: RankingModel) -> Any:
    """The fp32 model scripted, for serving with the same calling convention as int8."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(model.eval())
