"""The original deployment's pipeline, rebuilt as the baseline of every comparison.

A baseline that borrows our reconstruction and only swaps the rule would hide half of the
story (the original's NMF fit and its 1000-update transform are part of how it behaved), so
this is the whole original, as docs/domain.md describes it:

- training: scikit-learn `MiniBatchNMF` (5 components, alpha_H 0.1, Frobenius loss, raw
  counts with no normalisation), 30 `partial_fit` passes over the good LS, each component
  rescaled to mean 1 after every pass (as the original's NMF2D.fit did). `max_iter` 1000 and
  tol 0: every pass solves W with 1000 multiplicative updates, and so does `transform`;
- inference: `transform` (1000 multiplicative updates), reconstruction W H;
- rule: a ROC is bad when (x - W H)^2 > 1e5 on raw counts; a power group is anomalous when at
  least int(0.40 * n_rocs) of its ROCs are bad; Multi-Disk when the same (z side, blade side,
  ROG) is anomalous on two disks (a whole quarter counts too).

The original's Metric was the flag cast to float; the flag here is exactly the original's
decision. The rule itself (`large_loss`, `search_original`) lives here, not in the served
model, which carries only its own; `original_rule_flags` applies it to *our* reconstruction,
to tell the rule's part from the fit's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from mlserver_model.bad_ROC import GroupSearch, group_counts, group_search
from mlserver_model.geometry import GROUP_N_ROCS
from mlserver_model.pixelring2nmf import PixelRing2NMF, to_model_space

ORIGINAL_LOSS = 1e5  # a ROC is bad when (x - mu)^2 > 1e5 on raw counts ...
ORIGINAL_GROUP_FRACTION = 0.40  # ... on int(0.40 * n_rocs) ROCs of a group
ORIGINAL_PASSES = 30
ORIGINAL_ITERATIONS = 1000  # multiplicative updates per W solve (training and transform)
_TRANSFORM_CHUNK_LS = 500  # bounds the float64 copies of the maps


@dataclass(frozen=True)
class OriginalResult:
    """Per-LS outcome of the original pipeline."""

    flag: np.ndarray  # (N,) bool, before any DCS filter


def large_loss(counts: np.ndarray, expected: np.ndarray, loss: float, scratch: np.ndarray):
    """The original bad-ROC rule: squared difference on raw counts above `loss`."""
    np.subtract(counts, expected, out=scratch)
    scratch *= scratch
    return scratch > loss


def search_original(n_bad: np.ndarray) -> GroupSearch:
    """The original deployment's group rule: int(40 %) of all ROCs of the group are bad."""
    needed = np.floor(ORIGINAL_GROUP_FRACTION * GROUP_N_ROCS) / GROUP_N_ROCS
    return group_search(n_bad / GROUP_N_ROCS, needed)


def original_rule_flags(model: PixelRing2NMF, maps_nyx: np.ndarray) -> np.ndarray:
    """(N,) the original rule's Flag on *our* reconstruction (exact NNLS), DCS filter aside."""
    maps = np.asarray(maps_nyx)
    n_bad = np.zeros((len(maps), len(GROUP_N_ROCS)), dtype=np.int32)
    for start in range(0, len(maps), _TRANSFORM_CHUNK_LS):
        rows = slice(start, start + _TRANSFORM_CHUNK_LS)
        x = to_model_space(maps[rows])
        bad = large_loss(x, model.reconstruct(x), ORIGINAL_LOSS, np.empty_like(x))
        n_bad[rows] = group_counts(bad)
    return search_original(n_bad).metric >= model.thresholds.metric_threshold


@dataclass
class OriginalPipeline:
    """A trained original model: the scikit-learn estimator and the raw-loss rule."""

    nmf: object  # sklearn.decomposition.MiniBatchNMF, components_ of mean 1

    @classmethod
    def train(
        cls,
        maps_nyx: np.ndarray,
        *,
        n_components: int = 5,
        passes: int = ORIGINAL_PASSES,
        iterations: int = ORIGINAL_ITERATIONS,
        seed: int = 0,
    ) -> OriginalPipeline:
        """Train on good (N, 140, 56) maps as the original did (see the module docstring)."""
        from sklearn.decomposition import MiniBatchNMF
        from sklearn.exceptions import ConvergenceWarning

        x = to_model_space(maps_nyx).astype(np.float64)
        nmf = MiniBatchNMF(
            n_components=n_components,
            alpha_H=0.1,
            beta_loss="frobenius",
            max_iter=iterations,
            tol=0.0,
            batch_size=len(x),
            random_state=seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            for _ in range(passes):
                nmf.partial_fit(x)
                nmf.components_ /= nmf.components_.mean(axis=1, keepdims=True)
        return cls(nmf)

    def reconstruct(self, maps_nyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(counts, reconstruction), both float64 (N, 6528): the original's `transform`."""
        x = to_model_space(maps_nyx).astype(np.float64)
        expected = np.empty_like(x)
        for start in range(0, len(x), _TRANSFORM_CHUNK_LS):
            rows = slice(start, start + _TRANSFORM_CHUNK_LS)
            expected[rows] = self.nmf.transform(x[rows]) @ self.nmf.components_
        return x, expected

    def predict(self, maps_nyx: np.ndarray) -> OriginalResult:
        """The original's Flag of every LS of (N, 140, 56) maps."""
        x, expected = self.reconstruct(maps_nyx)
        bad = large_loss(x, expected, ORIGINAL_LOSS, np.empty_like(x))
        return OriginalResult(search_original(group_counts(bad)).metric >= 1.0)
