"""NMF inference on learned components, as an exact batched NNLS in numpy.

The components H (K, 6528) are learned offline (`pixelring2nmf.model.train`), each of mean 1.
Inference finds, for every LS, W >= 0 minimising ||x - W H||^2 on the raw counts. The optimum's
scale follows the LS's own occupancy, which is the normalisation that lets one model serve every
pileup. The original deployment ran 1000 multiplicative updates per request instead.
With K = 5 the problem is tiny once the Gram matrix G = H H^T and b = H x are known, so we
solve it *exactly*: the optimum is the unconstrained least-squares solution on its own support,
so we solve on every one of the 2^K - 1 supports at once (one small matrix product each), keep
the non-negative solutions, and take the one with the lowest objective. There is no iteration
and no tolerance beyond floating-point rounding (tests compare with scipy.optimize.nnls).
"""

from __future__ import annotations

import itertools

import numpy as np

MAX_EXACT_COMPONENTS = 10  # 1023 supports; beyond that enumeration stops being cheap
_CHUNK_LS = 4096  # bounds the (supports, LS, K) intermediate to a few tens of MB


def single_blas_thread() -> None:
    """Run BLAS on one thread in this process; called once by each kind of process that runs
    the model (the MLServer process, the toolkit's command line, its worker processes and
    Dask workers).

    Inference's products are skinny (16 LS x 7840 times 7840 x 8): a second BLAS thread saves
    next to nothing when the machine is idle, but when the cores are busy (other requests' JSON
    parsing, the other workers of an era) its spin-waiting made inference several times slower
    (~6x for a whole era on 2 cores). threadpoolctl comes with scikit-learn, so it is in every
    environment the model runs in.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


class BatchedNNLS:
    """Exact non-negative least squares for many right-hand sides and one small basis.

    Built once per model (at load time): for every support S of the K components, the
    pseudo-inverse of G[S, S] padded to (K, K). `solve` is then a handful of (N, K) products.
    """

    def __init__(self, components: np.ndarray) -> None:
        h = np.asarray(components, dtype=np.float64).reshape(len(components), -1)
        k = len(h)
        if not 1 <= k <= MAX_EXACT_COMPONENTS:
            raise ValueError(f"Exact NNLS supports 1..{MAX_EXACT_COMPONENTS} components, got {k}")
        self.gram = h @ h.T
        supports = [s for r in range(1, k + 1) for s in itertools.combinations(range(k), r)]
        solvers = np.zeros((len(supports), k, k))
        for i, s in enumerate(supports):
            idx = np.array(s)
            solvers[i][np.ix_(idx, idx)] = np.linalg.pinv(self.gram[np.ix_(idx, idx)])
        self.n_supports, self.n_components = len(supports), k
        # (K, supports * K): all restricted solutions of a batch in one matrix product
        self.support_solvers = np.ascontiguousarray(solvers.transpose(1, 0, 2).reshape(k, -1))
        # (supports * K, supports): sums the K entries of each support's block, so per-support
        # reductions are matrix products too (numpy reduces tiny axes slowly)
        self.block_sums = np.kron(np.eye(len(supports)), np.ones((k, 1)))

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """W (N, K) >= 0 minimising ||x - W H||^2, given rhs = x H^T (N, K)."""
        rhs = np.asarray(rhs, dtype=np.float64)
        out = np.empty_like(rhs)
        for start in range(0, len(rhs), _CHUNK_LS):
            out[start : start + _CHUNK_LS] = self._solve_chunk(rhs[start : start + _CHUNK_LS])
        return out

    def _solve_chunk(self, rhs: np.ndarray) -> np.ndarray:
        n, k = len(rhs), self.n_components
        # candidates[n, s*K:(s+1)*K] = least-squares solution restricted to support s
        candidates = rhs @ self.support_solvers
        # On its own support the optimum satisfies G w = b, so the objective
        # 1/2 w'Gw - b'w equals -1/2 b'w: one dot product per candidate.
        objective = (candidates * np.tile(rhs, self.n_supports)) @ self.block_sums
        objective *= -0.5
        tolerance = -1e-12 * np.abs(candidates).max(axis=1, keepdims=True)
        n_negative = (candidates < tolerance) @ self.block_sums
        objective[n_negative > 0] = np.inf
        best = objective.argmin(axis=1)
        rows = np.arange(n)
        solution = candidates.reshape(n, self.n_supports, k)[rows, best]
        # The empty support (W = 0, objective 0) wins when no candidate beats it.
        solution[objective[rows, best] > 0] = 0.0
        return np.maximum(solution, 0.0)
