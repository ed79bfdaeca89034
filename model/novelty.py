"""Novelty detection: is a cell unlike every cell type the model was trained on?

A classifier's softmax always picks one of its known types, so a cell of a type it never saw is
silently given the nearest known label. The scorers here give each cell a *novelty score* (higher =
less like the training cells) from the model's own outputs for that cell alone:

- ``"mahalanobis"`` (Lee et al. 2018): the smallest squared Mahalanobis distance from the cell's
  last hidden block's pre-activation (:func:`hidden_features`) to the training cells' class means, under one shared (tied) covariance
  shrunk towards a scaled identity (Ledoit-Wolf), so that it is invertible for any width.
- ``"relative_mahalanobis"`` (Ren et al. 2021): the same minus the distance to one Gaussian of all
  training cells, which discounts shifts that move a cell away from every class alike.
- ``"knn"``: the cosine distance from the cell's hidden features to its ``k``-th nearest training cell
  (stores a sample of the training features).
- ``"energy"`` (Liu et al. 2020): ``-T · logsumexp(logits / T)``.
- ``"max_softmax"`` (Hendrycks & Gimpel 2017): ``1 - max softmax(logits / T)``.
- ``"input_pca"``: the smallest Mahalanobis distance to the class means in the top principal
  components of the *standardized model input* (:func:`novelty_features`), under a tied, shrunk
  covariance. It keeps what the classifier discards: a type the classifier maps into a known type's
  region of its hidden layer may still express genes no known type does.

:func:`novelty_features` gives every kind of features from one forward pass as a mapping
``{INPUT, HIDDEN, LOGITS: array}``; every detector accepts that mapping (it picks its own input),
so callers can always pass it.

The default (:data:`DEFAULT_METHOD` at :data:`DEFAULT_QUANTILE`) is the scorer and quantile that
flagged the most cells of a left-out type on held-out labs within the known-type budget in
``python -m benchmarks.novelty``. Typical use at training time (``features`` as numpy arrays)::

    features = novelty_features(model.eval(), train_inputs)
    detector = NoveltyDetector.fit(DEFAULT_METHOD, features, train_targets, n_classes)
    detector.calibrate(novelty_features(model, validation_inputs), quantile=DEFAULT_QUANTILE)
    metadata, arrays = detector.to_state()

and at inference ``NoveltyDetector.from_state(metadata, arrays).is_novel(novelty_features(model, x))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from model.classifier import CellTypeClassifier

HIDDEN = "hidden"
"""Scorers whose input is :func:`hidden_features` (the last hidden block before its activation)."""
LOGITS = "logits"
"""Scorers whose input is the classifier's logits."""
INPUT = "input"
"""Scorers whose input is the standardized, clipped model input (``model.standardize(x)``)."""

LOW_CONFIDENCE = "low_confidence"
"""Unknown because the top calibrated probability is below the bundle's ``unknown_threshold``."""
UNLIKE_TRAINING = "unlike_training"
"""Unknown because the novelty score is above the detector's threshold."""
NO_COUNTS = "no_counts"
"""Unknown because the cell has no counts over the model's genes (an empty droplet, a failed library)."""
TOO_FEW_GENES = "too_few_genes"
"""Unknown because the cell detects fewer of the model's genes than the bundle's ``min_detected_genes``."""
UNKNOWN_REASONS = ("", NO_COUNTS, TOO_FEW_GENES, UNLIKE_TRAINING, LOW_CONFIDENCE)
"""Every value of a cell's ``unknown_reason``: ``""`` (a known type), then the reasons in the order they are
checked (the first that applies is reported)."""

DEFAULT_METHOD = "input_pca"
"""Default scorer (chosen on the leave-one-type-out study, ``python -m benchmarks.novelty``)."""
DEFAULT_QUANTILE = 0.999
"""Default quantile of the training labs' validation scores used as the threshold."""


@torch.no_grad()
def hidden_features(model: CellTypeClassifier, inputs: torch.Tensor) -> torch.Tensor:
    """The last hidden block's pre-activation (Linear → Norm, before ReLU) for model input ``inputs``.

    The distance scorers use this rather than the block's output: after the ReLU, cells of an unseen
    type collapse onto the known types' active units (measured in ``benchmarks.novelty``). Call it on
    a model in eval mode so the norm layers use their fixed running statistics.
    """
    earlier = model.blocks[:-1](model.standardize(inputs))
    linear, norm = model.blocks[-1][0], model.blocks[-1][1]
    return norm(linear(earlier))


@torch.no_grad()
def novelty_features(model: CellTypeClassifier, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every feature a detector may score, from one forward pass (call it in eval mode).

    Returns ``{INPUT: standardized model input, HIDDEN: hidden_features, LOGITS: logits}``; pass it
    (as numpy arrays) to :meth:`NoveltyDetector.score`, which takes what its scorer needs.
    """
    standardized = model.standardize(inputs)
    earlier = model.blocks[:-1](standardized)
    hidden = model.blocks[-1][1](model.blocks[-1][0](earlier))
    return {INPUT: standardized, HIDDEN: hidden, LOGITS: model.head(model.blocks[-1][2:](hidden))}


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative energy ``-T · logsumexp(logits / T)`` per row (higher = more novel)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    return -temperature * (top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1)))


def max_softmax_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``1 - max softmax(logits / T)`` per row (higher = more novel)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    probabilities = np.exp(scaled)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return 1.0 - probabilities.max(axis=1)


def ledoit_wolf_covariance(centered: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of already-centered rows, and the shrinkage used.

    ``(1 - s) · S + s · μ I`` with ``S`` the sample covariance, ``μ = trace(S) / d`` and ``s`` the
    Ledoit-Wolf (2004) estimate of the optimal shrinkage, clipped to [0, 1].
    """
    x = np.asarray(centered, dtype=np.float64)
    n, d = x.shape
    sample = x.T @ x / n
    mu = float(np.trace(sample)) / d
    target_distance = float(np.square(sample - mu * np.eye(d)).sum())
    if target_distance <= 0.0 or mu <= 0.0:
        return (mu if mu > 0 else 1.0) * np.eye(d), 1.0
    spread = float((np.square(np.square(x).sum(axis=1))).sum() / n**2 - np.square(sample).sum() / n)
    shrinkage = float(np.clip(spread / target_distance, 0.0, 1.0))
    return (1.0 - shrinkage) * sample + shrinkage * mu * np.eye(d), shrinkage


def _check_features(features: np.ndarray, width: int | None = None) -> np.ndarray:
    """``features`` checked by :func:`_checked_floats`, as float64."""
    return np.asarray(_checked_floats(features, width), dtype=np.float64)


def _checked_floats(features: np.ndarray, width: int | None = None) -> np.ndarray:
    """``features`` as a 2-d float array of ``width`` columns without NaN or infinities, else ValueError.

    A float array is returned as given (float32 stays float32: finiteness is the same in float64, so the
    half as large input is what gets checked); others are converted to float64 first.
    """
    source = np.asarray(features)
    if source.dtype.kind != "f":
        source = source.astype(np.float64)
    if source.ndim != 2:
        raise ValueError(f"features must be a 2-d (cells x features) array, got shape {source.shape}")
    if width is not None and source.shape[1] != width:
        raise ValueError(f"features have {source.shape[1]} columns but the detector was fitted on {width}")
    if not np.isfinite(source).all():
        raise ValueError("features contain NaN or infinite values")
    return source


class Scorer(Protocol):
    """What every novelty scorer provides."""

    method: str
    input: str

    def score(self, features: np.ndarray) -> np.ndarray:
        """Novelty score per row (higher = less like the training cells)."""

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters (no arrays)."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays, by name."""


@dataclass
class MahalanobisScorer:
    """Smallest squared Mahalanobis distance to the class means under a tied, shrunk covariance.

    With ``background`` (the *relative* Mahalanobis distance of Ren et al. 2021), the distance to one
    Gaussian fitted to all training cells is subtracted: a shift that moves a cell away from every
    class alike (a new lab's technical effect) then counts less than a move towards no class at all.

    Attributes:
        means: ``(n_classes, d)`` class means of the training features (rows of absent classes are NaN).
        precision: ``(d, d)`` inverse of the shared covariance.
        background_mean: ``(d,)`` mean of all training features (relative variant only).
        background_precision: ``(d, d)`` inverse of their shrunk covariance (relative variant only).
        shrinkage: the Ledoit-Wolf shrinkage of the class covariance.
    """

    means: np.ndarray
    precision: np.ndarray
    background_mean: np.ndarray | None = None
    background_precision: np.ndarray | None = None
    shrinkage: float = 0.0
    input: str = HIDDEN

    @property
    def method(self) -> str:
        """``"relative_mahalanobis"`` with a background, else ``"mahalanobis"``."""
        return "mahalanobis" if self.background_mean is None else "relative_mahalanobis"

    @classmethod
    def fit(
        cls, features: np.ndarray, labels: np.ndarray, n_classes: int, *, relative: bool = False
    ) -> MahalanobisScorer:
        """Class means and tied covariance of ``features`` grouped by integer ``labels`` in ``[0, n_classes)``."""
        x = _check_features(features)
        y = np.asarray(labels, dtype=np.int64)
        if y.shape != (x.shape[0],):
            raise ValueError(f"need one label per row: {x.shape[0]} rows, labels of shape {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"labels must be class indices in [0, {n_classes}), got {y.min()}..{y.max()}")
        if x.shape[0] < 2:
            raise ValueError("need at least two cells to fit a covariance")
        counts = np.bincount(y, minlength=n_classes)
        sums = np.zeros((n_classes, x.shape[1]))
        np.add.at(sums, y, x)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums / counts[:, None]
        covariance, shrinkage = ledoit_wolf_covariance(x - means[y])
        scorer = cls(means=means, precision=np.linalg.inv(covariance), shrinkage=shrinkage)
        if relative:
            scorer.background_mean = x.mean(axis=0)
            background, _ = ledoit_wolf_covariance(x - scorer.background_mean)
            scorer.background_precision = np.linalg.inv(background)
        return scorer

    def score(self, features: np.ndarray) -> np.ndarray:
        """``min_c (x - μ_c)ᵀ P (x - μ_c)`` over the classes seen in training (minus the background distance)."""
        # torch's matrix products (float64) follow the caller's torch thread limit; numpy's BLAS may start its
        # own threads, which made serving 10x slower on a busy CPU
        x = torch.from_numpy(_check_features(features, self.precision.shape[0]))
        means = torch.from_numpy(self.means[np.isfinite(self.means).all(axis=1)])
        precision = torch.from_numpy(self.precision)
        projected = x @ precision
        self_term = (projected * x).sum(dim=1)
        mean_term = ((means @ precision) * means).sum(dim=1)
        distances = self_term[:, None] - 2.0 * projected @ means.T + mean_term[None, :]
        nearest = distances.min(dim=1).values.clamp_min(0.0) if len(means) else torch.full_like(self_term, math.inf)
        if self.background_mean is None or self.background_precision is None:
            return nearest.numpy()
        centered = x - torch.from_numpy(self.background_mean)
        return (nearest - ((centered @ torch.from_numpy(self.background_precision)) * centered).sum(dim=1)).numpy()

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return {"shrinkage": self.shrinkage}

    def arrays(self) -> dict[str, np.ndarray]:
        """``means`` and ``precision`` (and the background's)."""
        arrays = {"means": self.means, "precision": self.precision}
        if self.background_mean is not None and self.background_precision is not None:
            arrays |= {"background_mean": self.background_mean, "background_precision": self.background_precision}
        return arrays


@dataclass
class KnnScorer:
    """Cosine distance to the ``k``-th nearest training cell in hidden-feature space.

    Attributes:
        reference: ``(m, d)`` unit-length hidden features of (a sample of) the training cells.
        k: which neighbour's distance is the score.
    """

    reference: np.ndarray
    k: int = 10
    method: str = "knn"
    input: str = HIDDEN

    @classmethod
    def fit(
        cls, features: np.ndarray, labels: np.ndarray, n_classes: int, *, k: int = 10, max_reference: int = 5000,
        seed: int = 0,
    ) -> KnnScorer:
        """Keep up to ``max_reference`` training cells (a class-stratified random sample) as references."""
        x = _check_features(features)
        y = np.asarray(labels, dtype=np.int64)
        if x.shape[0] <= k:
            raise ValueError(f"need more than k={k} training cells, got {x.shape[0]}")
        keep = np.arange(x.shape[0])
        if x.shape[0] > max_reference:
            rng = np.random.default_rng(seed)
            share = max_reference / x.shape[0]
            keep = np.concatenate([
                rng.permutation(np.flatnonzero(y == c))[: max(1, math.floor(share * int((y == c).sum())))]
                for c in range(n_classes) if (y == c).any()
            ])
        return cls(reference=_unit_rows(x[np.sort(keep)]), k=k)

    def score(self, features: np.ndarray) -> np.ndarray:
        """``1 - cos`` to the ``k``-th most similar reference cell."""
        x = _unit_rows(_check_features(features, self.reference.shape[1]))
        scores = np.empty(x.shape[0])
        for start in range(0, x.shape[0], 2048):
            similarity = x[start : start + 2048] @ self.reference.T
            kth = np.partition(-similarity, self.k - 1, axis=1)[:, self.k - 1]
            scores[start : start + 2048] = 1.0 + kth
        return scores

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return {"k": self.k}

    def arrays(self) -> dict[str, np.ndarray]:
        """``reference``."""
        return {"reference": self.reference}


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class LogitScorer:
    """Energy or max-softmax score of the logits at a fixed temperature (nothing fitted)."""

    method: str
    temperature: float = 1.0
    input: str = LOGITS

    def __post_init__(self) -> None:
        if self.method not in ("energy", "max_softmax"):
            raise ValueError(f"a logit scorer is 'energy' or 'max_softmax', got {self.method!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def score(self, features: np.ndarray) -> np.ndarray:
        """Novelty score of each row of logits."""
        logits = _check_features(features)
        function = energy_score if self.method == "energy" else max_softmax_score
        return function(logits, self.temperature)

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return {"temperature": self.temperature}

    def arrays(self) -> dict[str, np.ndarray]:
        """None: nothing is fitted."""
        return {}


def principal_components(x: np.ndarray, n_components: int, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and top ``n_components`` principal axes ``(d, k)`` of the rows of ``x`` (exact, deterministic).

    From the eigendecomposition of the ``d × d`` covariance, accumulated in float64 over row chunks of
    ``x`` (which may be float32: only one chunk at a time is converted), each axis signed so that its
    largest entry is positive; ``k`` is capped at ``min(d, rows - 1)``.
    """
    n, d = x.shape
    mean = np.zeros(d)
    for start in range(0, n, chunk):
        mean += np.asarray(x[start : start + chunk], dtype=np.float64).sum(axis=0)
    mean /= n
    covariance = np.zeros((d, d))
    for start in range(0, n, chunk):
        part = np.asarray(x[start : start + chunk], dtype=np.float64) - mean
        covariance += part.T @ part
    values, vectors = np.linalg.eigh(covariance / n)
    k = max(1, min(n_components, d, n - 1))
    axes = vectors[:, np.argsort(values)[::-1][:k]]
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(k)])
    return mean, axes * np.where(signs == 0, 1.0, signs)


def project(x: np.ndarray, center: np.ndarray, axes: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """``(x - center) @ axes`` in float64, converting ``x`` (float32 or float64) one row chunk at a time."""
    out = np.empty((x.shape[0], axes.shape[1]))
    for start in range(0, x.shape[0], chunk):
        part = np.array(x[start : start + chunk], dtype=np.float64)
        part -= center
        out[start : start + chunk] = part @ axes
    return out


@dataclass
class InputPcaScorer:
    """:class:`MahalanobisScorer` in the top principal components of the standardized model input.

    Attributes:
        center: ``(n_genes,)`` mean of the training cells' standardized input.
        components: ``(n_genes, k)`` principal axes of the training cells.
        distance: the Mahalanobis scorer fitted on the training cells' component scores.
    """

    center: np.ndarray
    components: np.ndarray
    distance: MahalanobisScorer
    method: str = "input_pca"
    input: str = INPUT

    @classmethod
    def fit(
        cls, features: np.ndarray, labels: np.ndarray, n_classes: int, *, n_components: int = 50
    ) -> InputPcaScorer:
        """Principal axes of the training cells' standardized input, then class means and tied covariance."""
        x = _checked_floats(features)  # kept as given (float32 from training): chunks go to float64 one by one
        if x.shape[0] < 3:
            raise ValueError("need at least three cells to fit principal components")
        center, components = principal_components(x, n_components)
        distance = MahalanobisScorer.fit(project(x, center, components), labels, n_classes)
        return cls(center=center, components=components, distance=distance)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance to the nearest class mean of the cell's component scores."""
        x = _checked_floats(features, self.center.shape[0])
        return self.distance.score(project(x, self.center, self.components))

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return {"n_components": int(self.components.shape[1]), "shrinkage": self.distance.shrinkage}

    def arrays(self) -> dict[str, np.ndarray]:
        """``center``, ``components`` and the component-space ``means`` and ``precision``."""
        return {"center": self.center, "components": self.components} | self.distance.arrays()


def _pick(features: Any, kind: str) -> Any:
    """The features of ``kind`` from a mapping (:func:`novelty_features`), or ``features`` itself."""
    if isinstance(features, Mapping):
        if kind not in features:
            raise ValueError(f"the novelty features lack {kind!r} (have {', '.join(map(str, features))})")
        value = features[kind]
        return value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else value
    return features


METHODS = ("mahalanobis", "relative_mahalanobis", "knn", "energy", "max_softmax", "input_pca")
"""Novelty scorers by name."""


@dataclass
class NoveltyDetector:
    """A novelty scorer with its threshold: cells scoring above ``threshold`` are unlike training.

    Attributes:
        scorer: the fitted scorer; ``scorer.input`` says which features it takes (:data:`INPUT`, :data:`HIDDEN` or :data:`LOGITS`).
        threshold: scores above it are novel (``inf`` until :meth:`calibrate`).
        quantile: the validation quantile the threshold was taken at (``None`` when set by hand).
        info: JSON-ready facts about the fit (cell counts), stored with the detector.
    """

    scorer: Scorer
    threshold: float = math.inf
    quantile: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        """The scorer's name (one of :data:`METHODS`)."""
        return self.scorer.method

    @property
    def input(self) -> str:
        """:data:`INPUT`, :data:`HIDDEN` or :data:`LOGITS`: what :meth:`score` expects."""
        return self.scorer.input

    @classmethod
    def fit(
        cls, method: str, features: Any, labels: np.ndarray, n_classes: int, **params: Any
    ) -> NoveltyDetector:
        """Fit ``method`` on the training cells' features.

        Args:
            method: one of :data:`METHODS`.
            features: of the training cells: the mapping of :func:`novelty_features` (any method), or
                one ``(n_cells, d)`` array of the scorer's :attr:`input`: hidden features
                (``mahalanobis``, ``relative_mahalanobis``, ``knn``), logits (``energy``,
                ``max_softmax``) or the standardized input (``input_pca``).
            labels: integer class index of each training cell.
            n_classes: number of classes of the model.
            params: scorer options (``k``, ``max_reference``, ``seed`` for knn; ``temperature`` for
                the logit scorers; ``n_components`` for input_pca).
        """
        if method not in METHODS:
            raise ValueError(f"unknown novelty method {method!r}; choose one of {', '.join(METHODS)}")
        scorer = _fit_scorer(method, features, labels, n_classes, params)
        n_cells = len(np.asarray(labels))
        return cls(scorer=scorer, info={"n_cells_fit": n_cells})

    def score(self, features: Any) -> np.ndarray:
        """Novelty score per cell; each cell's score depends on that cell's features alone.

        ``features``: the mapping of :func:`novelty_features`, or one array of the scorer's :attr:`input`.
        """
        return self.scorer.score(_pick(features, self.input))

    def calibrate(self, validation_features: Any, quantile: float = DEFAULT_QUANTILE) -> float:
        """Set :attr:`threshold` to the ``quantile`` of the validation cells' scores and return it.

        Use validation cells of the training labs only (never a held-out lab): then about
        ``1 - quantile`` of known-type cells from the training labs are flagged.
        """
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        scores = self.score(validation_features)
        if scores.size == 0:
            raise ValueError("no validation cells to choose the novelty threshold on")
        self.threshold = float(np.quantile(scores, quantile))
        self.quantile = quantile
        self.info["n_cells_calibration"] = int(scores.size)
        return self.threshold

    def is_novel(self, features: Any) -> np.ndarray:
        """Boolean per cell: novelty score above :attr:`threshold`."""
        return self.score(features) > self.threshold

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(metadata, arrays)``: JSON-ready metadata and float32 arrays (e.g. for safetensors)."""
        metadata = {
            "method": self.method,
            "input": self.input,
            "threshold": self.threshold if math.isfinite(self.threshold) else None,
            "quantile": self.quantile,
            "params": self.scorer.params(),
            "info": dict(self.info),
        }
        arrays = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in self.scorer.arrays().items()}
        return metadata, arrays

    @classmethod
    def from_state(cls, metadata: dict[str, Any], arrays: dict[str, np.ndarray]) -> NoveltyDetector:
        """Rebuild from :meth:`to_state` output.

        Raises:
            ValueError: an unknown method, or arrays missing for it.
        """
        method = metadata.get("method")
        params = dict(metadata.get("params") or {})
        try:
            if method not in METHODS:
                raise ValueError(f"unknown novelty method {method!r}; this bundle may be from a newer celltype")
            scorer = _scorer_from_state(method, params, arrays)
        except KeyError as exc:
            raise ValueError(f"novelty detector {method!r} is missing its array {exc.args[0]!r}") from None
        threshold = metadata.get("threshold")
        return cls(
            scorer=scorer,
            threshold=math.inf if threshold is None else float(threshold),
            quantile=metadata.get("quantile"),
            info=dict(metadata.get("info") or {}),
        )


_OPTIONS = {
    "knn": ("k", "max_reference", "seed"),
    "energy": ("temperature",),
    "max_softmax": ("temperature",),
    "input_pca": ("n_components",),
    "mahalanobis": (),
    "relative_mahalanobis": (),
}


def _fit_scorer(method: str, features: Any, labels: np.ndarray, n_classes: int, params: dict[str, Any]) -> Any:
    """The scorer ``method`` fitted on its features; an option it does not take is an error."""
    options = {k: v for k, v in params.items() if k in _OPTIONS[method]}
    unused = sorted(set(params) - set(options))
    if unused:
        raise ValueError(f"novelty method {method!r} takes no option {', '.join(map(repr, unused))}")
    if method in ("energy", "max_softmax"):
        return LogitScorer(method, **options)
    x = _pick(features, INPUT if method == "input_pca" else HIDDEN)
    if method == "input_pca":
        return InputPcaScorer.fit(x, labels, n_classes, **options)
    if method == "knn":
        return KnnScorer.fit(x, labels, n_classes, **options)
    return MahalanobisScorer.fit(x, labels, n_classes, relative=method == "relative_mahalanobis")


def _scorer_from_state(method: str, params: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
    """Rebuild one scorer from its parameters and arrays (``KeyError`` for a missing array)."""

    def array(name: str) -> np.ndarray:
        return np.asarray(arrays[name], dtype=np.float64)

    if method in ("mahalanobis", "relative_mahalanobis"):
        relative = method == "relative_mahalanobis"
        return MahalanobisScorer(
            means=array("means"),
            precision=array("precision"),
            background_mean=array("background_mean") if relative else None,
            background_precision=array("background_precision") if relative else None,
            shrinkage=float(params.get("shrinkage", 0.0)),
        )
    if method == "knn":
        return KnnScorer(reference=array("reference"), k=int(params.get("k", 10)))
    if method == "input_pca":
        distance = MahalanobisScorer(means=array("means"), precision=array("precision"),
                                     shrinkage=float(params.get("shrinkage", 0.0)))
        return InputPcaScorer(center=array("center"), components=array("components"), distance=distance)
    return LogitScorer(method, temperature=float(params.get("temperature", 1.0)))


def unknown_reasons(
    confidence: np.ndarray,
    unknown_threshold: float,
    novel: np.ndarray | None,
    *,
    detected_genes: np.ndarray | None = None,
    min_detected_genes: int = 1,
) -> np.ndarray:
    """Why each cell is Unknown: one of :data:`UNKNOWN_REASONS` per cell (``""``: not Unknown).

    The first that applies, in this order: :data:`NO_COUNTS` (no detected model gene),
    :data:`TOO_FEW_GENES` (fewer than ``min_detected_genes``), :data:`UNLIKE_TRAINING` (flagged by the
    novelty detector, whatever its confidence), :data:`LOW_CONFIDENCE` (top calibrated probability
    below ``unknown_threshold``).

    Args:
        confidence: top calibrated probability per cell.
        unknown_threshold: the bundle's probability threshold.
        novel: :meth:`NoveltyDetector.is_novel` per cell, or ``None`` without a detector.
        detected_genes: number of the model's genes with a value above 0, per cell (``None``: not checked).
        min_detected_genes: cells detecting fewer model genes are ``too_few_genes``.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    reasons = np.where(confidence < unknown_threshold, LOW_CONFIDENCE, "").astype(object)
    for name, flags in (("novel", novel), ("detected_genes", detected_genes)):
        if flags is not None and np.shape(flags) != confidence.shape:
            raise ValueError(f"{name} has shape {np.shape(flags)} but confidence has {confidence.shape}")
    if novel is not None:
        reasons[np.asarray(novel, dtype=bool)] = UNLIKE_TRAINING
    if detected_genes is not None:
        detected = np.asarray(detected_genes)
        reasons[detected < min_detected_genes] = TOO_FEW_GENES
        reasons[detected == 0] = NO_COUNTS
    return reasons
