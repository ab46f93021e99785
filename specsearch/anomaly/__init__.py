"""Outlier scores, artefact screening and ranked anomaly candidate lists.

Rows come from :mod:`specsearch.rows` (an index directory or an embeddings dataset):

    tables = {"lamost": table_from_embeddings(EMB, "lamost"), ...}   # or table_from_index
    scores = score_tables(tables)                                       # every object
    flags = {"lamost": screen(catalog_features(CATALOG, "lamost"), teff_pred=...)}
    top = candidate_list(scores, flags, config=CandidateConfig(top=100))
    write_table(top, "anomalies.fits")                                  # specsearch.rows
"""

from specsearch.anomaly.artefacts import ArtefactConfig, quality_features
from specsearch.anomaly.candidates import CandidateConfig, candidate_list, modality_candidates
from specsearch.anomaly.neighbours import FaissNeighbours, KnnResult, NeighbourConfig, self_knn
from specsearch.anomaly.robust import combine_scores, robust_z
from specsearch.anomaly.scoring import (COMPONENTS, ModalityScores, ScoreConfig,
                                        score_modality, score_tables)
from specsearch.anomaly.screening import (ArtefactFlags, FeatureTable, catalog_features,
                                          features_of_arrays, screen)

__all__ = [
    "CandidateConfig", "candidate_list", "modality_candidates", "FaissNeighbours",
    "KnnResult", "NeighbourConfig", "self_knn", "combine_scores", "robust_z", "COMPONENTS",
    "ModalityScores", "ScoreConfig", "score_modality", "score_tables", "ArtefactFlags",
    "FeatureTable", "catalog_features", "features_of_arrays", "screen", "ArtefactConfig",
    "quality_features",
]
