"""What the model says about a batch of spectra: :class:`EmbeddingBatch`, the numpy result
of :meth:`specsearch.model.api.SpecModel.embed_numpy` (embeddings, head predictions with
uncertainties, residuals, the domain check and identity vectors)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class EmbeddingBatch:
    """What the model says about n spectra of one modality (numpy, physical units).

    Attributes:
        embedding: (n, D) float32, L2-normalised; NaN rows where ``good`` is False.
        good: (n,) bool, False for spectra ``prepare_model_input`` rejects (too few good
            pixels: all masked, NaN/inf, zero flux).
        predictions: (n, L) float32 head predictions (``label_names``; K for teff, dex else).
        uncertainties: (n, L) float32 calibrated 1-sigma uncertainties.
        label_names: the L label names.
        class_prob: (n, C) float32 class probabilities, or None without a classifier.
        class_names: the C class names.
        recon_residual: (n,) reduced chi of the own-spectrum reconstruction (noise plus the
            model's validation error floor; ~1 for a normal star), if asked for.
        translation_residual: (n,) reduced chi of the translation: against the partner
            spectrum when one is given, else of the round trip own -> other -> own.
        recon_relative: (n,) median relative error of the own-spectrum reconstruction
            (:func:`specsearch.model.domain.relative_residual`), if residuals or the domain
            check were asked for.
        out_of_domain: (n,) bool, the spectra the model's domain check flags (their
            parameters are unreliable: the model has not learnt stars like them, or the
            spectrum lacks the window it reads most); None when not asked for or the
            model has no ``domain_check.json``.
        window_coverage: (n,) the fraction of the domain check's coverage window with
            data (:func:`specsearch.model.domain.window_coverage`), when the check has a
            coverage rule for the modality.
        identity: (n, identity_dim) float32 L2-normalised identity vectors ("which star",
            :meth:`SpecModel.identity_numpy`), NaN rows where ``good`` is False; None when
            not asked for or the model has no identity encoder for the modality.
    """

    embedding: np.ndarray
    good: np.ndarray
    predictions: np.ndarray
    uncertainties: np.ndarray
    label_names: tuple[str, ...]
    class_prob: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    recon_residual: np.ndarray | None = None
    translation_residual: np.ndarray | None = None
    recon_relative: np.ndarray | None = None
    out_of_domain: np.ndarray | None = None
    window_coverage: np.ndarray | None = None
    identity: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.embedding.shape[0])

    def label(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(prediction, uncertainty) of one label."""
        try:
            i = self.label_names.index(name)
        except ValueError:
            raise KeyError(f"no label {name!r}; the model predicts {self.label_names}") from None
        return self.predictions[:, i], self.uncertainties[:, i]
