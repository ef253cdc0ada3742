"""The simulated world's hidden preferences: who would click what, and for how long.

Users and items have latent taste vectors; the chance that user u clicks item i shown on
device d is ``sigmoid(base + a_u + b_i + e_d + strength * <t_u, v_i>)``. Item popularity
(how often an item is shown at all) is Zipf-like and independent of its appeal, so a
model that only counts clicks per item is beaten by one that learns tastes. Everything is
derived from the seed: ``World(seed=7)`` in another process is the same world.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

DEVICES: Final = ("ios", "android", "web")
_DEVICE_EFFECT: Final = np.array([0.25, 0.0, -0.35])
_DIM: Final = 8

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def user_id(index: int) -> str:
    """The id of the user with this index."""
    return f"u{index}"


def item_id(index: int) -> str:
    """The id of the item with this index."""
    return f"i{index}"


def sigmoid(x: FloatArray) -> FloatArray:
    """The logistic function."""
    out: FloatArray = 1.0 / (1.0 + np.exp(-x))
    return out


@dataclass(frozen=True)
class World:
    """Latent parameters of users and items, reproducible from the seed."""

    users: int
    items: int
    seed: int = 0
    zipf_exponent: float = 1.05
    base_logit: float = -2.4
    taste_strength: float = 2.6
    # After this time (epoch ms), users' tastes move: part of each taste vector is redrawn.
    shift_at_ms: int | None = None
    shift_share: float = 0.8
    params: dict[str, FloatArray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < 1:
            raise ValueError("a world needs at least one user and one item")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5A1C1]))
        ranks = rng.permutation(self.items) + 1
        popularity = 1.0 / ranks.astype(np.float64) ** self.zipf_exponent
        tastes = rng.normal(0.0, 1.0, (self.users, _DIM)) / np.sqrt(_DIM)
        shifted = rng.normal(0.0, 1.0, (self.users, _DIM)) / np.sqrt(_DIM)
        params = {
            "popularity": popularity / popularity.sum(),
            "item_traits": rng.normal(0.0, 1.0, (self.items, _DIM)),
            "item_bias": rng.normal(0.0, 0.35, self.items),
            "user_bias": rng.normal(0.0, 0.3, self.users),
            "tastes": tastes,
            "shifted_tastes": np.sqrt(1 - self.shift_share**2) * tastes
            + self.shift_share * shifted,
            "activity": rng.lognormal(np.log(3.0), 0.6, self.users),
            "device": rng.integers(0, len(DEVICES), self.users).astype(np.float64),
        }
        object.__setattr__(self, "params", params)

    def click_probability(
        self, users: IntArray, items: IntArray, devices: IntArray, times_ms: IntArray
    ) -> FloatArray:
        """P(click) for each (user, item, device, time) impression, vectorised."""
        p = self.params
        tastes = p["tastes"][users]
        if self.shift_at_ms is not None:
            late = times_ms >= self.shift_at_ms
            tastes = np.where(late[:, None], p["shifted_tastes"][users], tastes)
        affinity = np.einsum("ij,ij->i", tastes, p["item_traits"][items])
        logit = (
            self.base_logit
            + p["user_bias"][users]
            + p["item_bias"][items]
            + _DEVICE_EFFECT[devices]
            + self.taste_strength * affinity
        )
        return sigmoid(logit)

    def dwell_ms(self, probability: FloatArray, rng: np.random.Generator) -> IntArray:
        """Dwell time of clicks: longer when the user liked the item more."""
        mean_log = np.log(8_000.0) + 1.2 * (probability - 0.2)
        dwell = rng.lognormal(mean_log, 0.7)
        clipped: IntArray = np.clip(dwell, 200, 3_600_000).astype(np.int64)
        return clipped

    def sample_items(self, count: int, rng: np.random.Generator) -> IntArray:
        """Items to show, drawn by (Zipf-like) popularity."""
        return rng.choice(self.items, size=count, p=self.params["popularity"]).astype(np.int64)

    def device_of(self, users: IntArray, rng: np.random.Generator) -> IntArray:
        """Each user's usual device, with one session in five on another device."""
        usual = self.params["device"][users].astype(np.int64)
        other = rng.integers(0, len(DEVICES), len(users))
        chosen: IntArray = np.where(rng.random(len(users)) < 0.2, other, usual)
        return chosen
