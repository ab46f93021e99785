"""Queries by an observed spectrum: the :class:`SpectrumQueries` part of
:class:`specsearch.query.SearchEngine` (the attached encoder, a spectrum's embedding and
predictions, and the search that starts from them).

    engine.attach_encoder(load_model(None))
    name, vector, predictions = engine.embed_spectrum(spectrum)
    hits = engine.search_spectrum(spectrum, target_modality="xp")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from specsearch.embed.encode import Encoder, identity_dim_of
from specsearch.errors import ModelError, QueryError, SpectrumError
from specsearch.index.config import SearchKnobs
from specsearch.query import agreement as agree
from specsearch.query.filters import Filter
from specsearch.query.results import Neighbours
from specsearch.spectrum import Spectrum

if TYPE_CHECKING:
    from specsearch.query.engine import FilterLike


class EmbeddedSpectrum(NamedTuple):
    """One spectrum as a query sees it (:meth:`SpectrumQueries._embed`)."""

    modality: str
    vector: np.ndarray                   # (D,) embedding
    predictions: dict[str, Any]          # label -> (value, uncertainty)
    domain: dict[str, Any] | None        # the domain check (None: the model has none)
    identity: np.ndarray | None          # identity vector, asked for and where there is one
    spikes_masked: int                   # pixels masked as cosmic rays / hot pixels
    telluric: dict[str, Any] | None      # the telluric check (LAMOST grid), see _embed


class SpectrumQueries:
    """Spectrum queries of :class:`~specsearch.query.SearchEngine` (the engine supplies
    ``encoder``, ``model_hash``, ``has_identity`` and ``search``)."""

    def attach_encoder(self, encoder: Encoder) -> None:
        """Use ``encoder`` for spectrum queries; it must be the model the index was built
        from (its ``model_hash``), else its embeddings would not be comparable."""
        got = getattr(encoder, "model_hash", None)
        if got != self.model_hash:
            raise ModelError(
                f"the model ({str(got)[:16]}...) is not the one this index was built from "
                f"({self.model_hash[:16]}...); load that model or rebuild the index with "
                f"embeddings from this one")
        self.encoder = encoder

    def embed_spectrum(self, spectrum: Spectrum, modality: str | None = None
                       ) -> tuple[str, np.ndarray, dict[str, Any]]:
        """(modality, (D,) embedding, predictions) of one spectrum via the attached encoder:
        put on the modality's canonical grid as ingest does
        (:func:`specsearch.preprocess.to_canonical_grid`: in the rest frame, from the file's
        redshift or a measured radial velocity) then encoded."""
        got = self._embed(spectrum, modality)
        return got.modality, got.vector, got.predictions

    def _embed(self, spectrum: Spectrum, modality: str | None, *, identity: bool = False
               ) -> EmbeddedSpectrum:
        """:meth:`embed_spectrum` plus the model's domain check of the spectrum (None for
        an encoder without one, see :mod:`specsearch.model.domain`; with the share of the
        check's coverage window that has data, and ``broader_than_model`` for a spectrum
        broader than the model reads) and, asked for and where the encoder has them, its
        identity vector (else None)."""
        from specsearch.preprocess import to_canonical_grid
        from specsearch.preprocess.lsf import resolution_match
        if self.encoder is None:
            raise QueryError("spectrum queries need a model: engine.attach_encoder("
                             "load_model(...)) or `specsearch search --model`")
        name = modality or spectrum.modality
        if name is None:
            raise QueryError(f"{spectrum.path or spectrum.spectrum_id or 'spectrum'}: say which "
                             f"modality the spectrum is (lamost or xp)")
        flux, ivar, z, _, n_spikes = to_canonical_grid(spectrum, name)
        flux, ivar, telluric = self._telluric(spectrum, name, flux, ivar, z)
        check = getattr(self.encoder, "domain_check", None)
        extra = {"with_domain": True} if check is not None else {}
        if identity and identity_dim_of(self.encoder, name):
            extra["with_identity"] = True
        batch = self.encoder.embed_numpy(name, flux[None], ivar[None], **extra)
        if not bool(np.asarray(batch.good)[0]):
            raise SpectrumError(f"{spectrum.path or spectrum.spectrum_id or 'spectrum'}: too few "
                                f"usable pixels on the {name} grid to embed it")
        preds = {n: (float(batch.predictions[0, i]), float(batch.uncertainties[0, i]))
                 for i, n in enumerate(batch.label_names)}
        domain = None
        flags = getattr(batch, "out_of_domain", None)
        if check is not None and flags is not None:
            domain = {"recon_relative": float(batch.recon_relative[0]),
                      "threshold": check.thresholds.get(name),
                      "out_of_domain": bool(flags[0])}
            coverage = getattr(batch, "window_coverage", None)
            rule = getattr(check, "coverage", {}).get(name)
            if coverage is not None and rule is not None:   # the window's share with data
                domain.update(window_coverage=float(coverage[0]),
                              min_coverage=float(rule["min_fraction"]),
                              coverage_window_A=[float(x) for x in rule["window_A"]])
            match = resolution_match(spectrum, name)
            if match is not None and match.broader and match.input_fwhm_A is not None:
                # broader than the model reads: its [Fe/H] reads low (preprocess.lsf)
                domain.update(out_of_domain=True, broader_than_model={
                    "input_fwhm_A": float(match.input_fwhm_A),
                    "model_fwhm_A": float(match.target_fwhm_A)})
        id_vec = getattr(batch, "identity", None) if extra.get("with_identity") else None
        return EmbeddedSpectrum(name, np.asarray(batch.embedding[0], np.float32), preds, domain,
                                None if id_vec is None else np.asarray(id_vec[0], np.float32),
                                n_spikes, telluric)

    def _telluric(self, spectrum: Spectrum, modality: str, flux: np.ndarray,
                  ivar: np.ndarray, z: float | None
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
        """A LAMOST-grid spectrum checked for telluric absorption left in: its bands masked
        where the model finds the O2 A band (:mod:`specsearch.model.telluric`; a spectrum
        stated uncorrected, :func:`specsearch.preprocess.state_telluric`, had them masked
        when it was read). Encoders without a decoder are not checked."""
        from specsearch.model.telluric import mask_where_found
        from specsearch.preprocess import C_KMS

        if modality != "lamost":
            return flux, ivar, None
        if spectrum.meta.get("telluric_uncorrected"):
            return flux, ivar, {"masked": True, "source": "stated"}
        if not (hasattr(self.encoder, "decode") and hasattr(self.encoder, "encode")):
            return flux, ivar, None
        rv = None if z is None else z * C_KMS
        ivar, found = mask_where_found(self.encoder, flux, ivar, rv)
        detected = bool(found.detected[0])
        info = {"masked": detected, "source": "detected" if detected else None,
                "depth": float(found.depth[0]), "sigma": float(found.sigma[0])}
        return flux, ivar, info

    def search_spectrum(self, spectrum: Spectrum, *, modality: str | None = None,
                        target_modality: str | None = None, k: int = 10, offset: int = 0,
                        limit: int | None = None, filter: FilterLike = None,
                        knobs: SearchKnobs | None = None, identity: bool = True,
                        agreement: bool = True) -> Neighbours:
        """Neighbours of an observed spectrum (any grid; encoded by the attached model).
        ``query`` of the result holds the model's predictions for it, ``spikes_masked``
        (its pixels masked as cosmic rays before reading), for a LAMOST-grid spectrum
        ``telluric`` (``masked``, ``source``: ``stated`` or ``detected``, the A band's
        ``depth``; :meth:`_telluric`) and, for a model with a domain check, ``domain``
        (``out_of_domain``: the parameters are unreliable).
        ``identity``: in-modality, re-rank by identity vectors where the model and the
        index have them; ``agreement``: cross-modal, re-rank by the agreement of the
        candidates' stored parameters with the model's predictions for the spectrum
        (:mod:`specsearch.query.engine`)."""
        flt = filter if isinstance(filter, Filter) else Filter.parse(filter)
        name = modality or spectrum.modality
        target = target_modality or flt.modality or name
        want = bool(identity and name and target == name and self.has_identity(name))
        name, vec, preds, domain, id_vec, n_spikes, telluric = self._embed(
            spectrum, modality, identity=want)
        query = {"kind": "spectrum", "query_modality": name,
                 "spectrum_id": spectrum.spectrum_id, "predictions": preds,
                 "spikes_masked": n_spikes}
        if telluric is not None:
            query["telluric"] = telluric
        if domain is not None:
            query["domain"] = domain
        params = ({n: preds[n] for n in agree.TOLERANCE if n in preds}
                  if agreement and (target or name) != name else None)
        return self.search(vec, modality=target or name, k=k, offset=offset, limit=limit,
                           filter=flt, knobs=knobs, query=query, identity=id_vec,
                           parameters=params or None)
