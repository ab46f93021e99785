"""Outlier scores, artefact screening, candidate lists and "more like this".

    tables = {"lamost": table_from_embeddings(EMB, "lamost"), ...}   # or table_from_index
    scores = score_tables(tables)                                       # every object
    flags = {"lamost": screen(catalog_features(CATALOG, "lamost"), teff_pred=...)}
    top = candidate_list(scores, flags, config=CandidateConfig(top=100))
    write_table(top, "anomalies.fits")
"""

from specsearch.anomaly.candidates import CandidateConfig, candidate_list, modality_candidates
from specsearch.anomaly.neighbours import FaissNeighbours, KnnResult, NeighbourConfig, self_knn
from specsearch.anomaly.robust import combine_scores, robust_z
from specsearch.anomaly.scoring import (COMPONENTS, ModalityScores, ScoreConfig,
                                        score_modality, score_tables)
from specsearch.anomaly.screening import (ArtefactFlags, FeatureTable, catalog_features,
                                          features_of_arrays, screen)
from specsearch.anomaly.artefacts import ArtefactConfig, quality_features
from specsearch.anomaly.similar import example_vectors, more_like_this
from specsearch.anomaly.sources import EmbeddingTable, table_from_embeddings, table_from_index
from specsearch.anomaly.writers import write_table

__all__ = [
    "CandidateConfig", "candidate_list", "modality_candidates", "FaissNeighbours",
    "KnnResult", "NeighbourConfig", "self_knn", "combine_scores", "robust_z", "COMPONENTS",
    "ModalityScores", "ScoreConfig", "score_modality", "score_tables", "ArtefactFlags",
    "FeatureTable", "catalog_features", "features_of_arrays", "screen", "ArtefactConfig",
    "quality_features", "example_vectors", "more_like_this", "EmbeddingTable",
    "table_from_embeddings", "table_from_index", "write_table",
]
