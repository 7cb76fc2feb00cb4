"""Evaluation helpers for per-image features: PCA fitted on a train split, and cosine kNN accuracy.

The protocol of the FUNGI paper's kNN evaluations: features are (optionally) reduced by a PCA fitted on
the train split only, L2-normalised, and each test image takes the majority label of its k = 20 most
cosine-similar train images (ties go to the label with the larger summed similarity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PCA", "knn_accuracy", "knn_predict", "labels_from_ids"]


@dataclass
class PCA:
    """A PCA fitted in float64: ``transform(x) = (x - mean) @ components.T``."""

    mean: np.ndarray  # [D]
    components: np.ndarray  # [N, D], rows by decreasing variance

    @classmethod
    def fit(cls, x: np.ndarray, n_components: int) -> PCA:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"PCA needs a [rows >= 2, D] matrix, got {x.shape}")
        n = min(int(n_components), x.shape[0], x.shape[1])
        if n < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        comps = vt[:n]
        # A deterministic sign per component: its largest-magnitude coefficient is positive.
        signs = np.sign(comps[np.arange(n), np.abs(comps).argmax(1)])
        signs[signs == 0] = 1
        return cls(mean=mean, components=comps * signs[:, None])

    @classmethod
    def fit_moments(cls, count: int, total: np.ndarray, gram: np.ndarray, n_components: int) -> PCA:
        """The PCA of rows known only by their count, sum ``total`` [D] and Gram matrix ``gram`` =
        X^T X [D, D] (float64; accumulated shard by shard): eigenvectors of the scatter matrix, by
        decreasing eigenvalue, with ``fit``'s sign rule. Equals ``fit`` up to rounding."""
        if count < 2 or total is None or gram is None:
            raise ValueError(f"PCA needs at least 2 rows, got {count}")
        total = np.asarray(total, dtype=np.float64)
        d = total.shape[0]
        n = min(int(n_components), int(count), d)
        if n < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        mean = total / count
        scatter = np.asarray(gram, dtype=np.float64) - count * np.outer(mean, mean)
        vals, vecs = np.linalg.eigh((scatter + scatter.T) / 2)
        comps = vecs[:, np.argsort(vals)[::-1][:n]].T
        signs = np.sign(comps[np.arange(n), np.abs(comps).argmax(1)])
        signs[signs == 0] = 1
        return cls(mean=mean, components=comps * signs[:, None])

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            np.savez(f, mean=self.mean, components=self.components)

    @classmethod
    def load(cls, path: str) -> PCA:
        with np.load(path, allow_pickle=False) as z:
            return cls(mean=z["mean"], components=z["components"])


def labels_from_ids(ids) -> list[str]:
    """Class labels of a labelled folder (``class/.../image``): each id's first path component."""
    out = []
    for i in ids:
        parts = str(i).replace("\\", "/").split("/")
        if len(parts) < 2:
            raise ValueError(f"id {i!r} has no class folder: a labelled folder is root/CLASS/image")
        out.append(parts[0])
    return out


def knn_predict(
    train: np.ndarray, train_labels, test: np.ndarray, k: int = 20, chunk: int = 1024
) -> np.ndarray:
    """Majority label among each test row's k most cosine-similar train rows."""
    classes, y = np.unique(np.asarray(train_labels), return_inverse=True)
    tr = torch.nn.functional.normalize(torch.as_tensor(np.asarray(train), dtype=torch.float64), dim=1)
    te = torch.nn.functional.normalize(torch.as_tensor(np.asarray(test), dtype=torch.float64), dim=1)
    k = min(int(k), tr.shape[0])
    y = torch.as_tensor(y)
    preds = []
    for start in range(0, te.shape[0], chunk):
        sims, idx = (te[start : start + chunk] @ tr.T).topk(k, dim=1)
        votes = torch.zeros(idx.shape[0], len(classes), dtype=torch.float64)
        votes.scatter_add_(1, y[idx], torch.ones_like(sims))
        weight = torch.zeros_like(votes).scatter_add_(1, y[idx], sims)
        # Votes first; the summed similarity (< k) only breaks ties.
        preds.append((votes * (2 * k + 1) + weight).argmax(1))
    return classes[torch.cat(preds).numpy()] if preds else classes[:0]


def knn_accuracy(
    train: np.ndarray, train_labels, test: np.ndarray, test_labels, k: int = 20, pca: int | None = None
) -> float:
    """Top-1 kNN accuracy (cosine, k neighbours), with a PCA to ``pca`` dims fitted on train when given."""
    if pca:
        reducer = PCA.fit(train, pca)
        train, test = reducer.transform(train), reducer.transform(test)
    pred = knn_predict(train, train_labels, test, k=k)
    return float(np.mean(pred == np.asarray(test_labels)))
