"""specsearch: a vector similarity search engine for stellar spectra.

LAMOST-like optical spectra and Gaia XP spectra are mapped by contrastively aligned encoders
into one embedding space, indexed with FAISS / hnswlib, and queried by example, across
modalities, with filters, and for outliers and metal-poor stars.

The package does no work at import time; import the stage you need, e.g.
``from specsearch.io import read_spectra`` or ``from specsearch.preprocess import LAMOST_GRID``.
"""

__version__ = "0.1.0"

MODALITIES: tuple[str, ...] = ("lamost", "xp")
"""The two spectral modalities: LAMOST-like optical (R~1800) and Gaia XP sampled spectra."""
