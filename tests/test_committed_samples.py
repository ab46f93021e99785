"""The committed samples (tests/data) stay small, documented, and free of restricted data."""

from __future__ import annotations

import numpy as np
from astropy.table import Table

MAX_BYTES = 3_000_000
XP_PARTNERS = {120435178731136, 319343704120704, 349511554371328}


def _data_files(samples):
    return [p for p in sorted(samples.rglob("*")) if p.is_file()
            and p.name != "README.md" and "LICENSES" not in p.parts]


def test_samples_are_small_and_documented(samples):
    files = _data_files(samples)
    assert files, samples
    total = sum(p.stat().st_size for p in samples.rglob("*") if p.is_file())
    assert total < MAX_BYTES, f"tests/data holds {total} B; keep it under {MAX_BYTES} B"
    readme = (samples / "README.md").read_text()
    undocumented = [str(p.relative_to(samples)) for p in files if p.name not in readme]
    assert not undocumented, f"add source and licence to tests/data/README.md: {undocumented}"
    # LAMOST DR10 files are for internal use only and must never be committed.
    assert not [p for p in samples.rglob("*") if "dr10" in str(p.relative_to(samples)).lower()]
    for name in ("LearningLAMOST-MIT.txt", "GaiaXPy-BSD-3-Clause.txt",
                 "mangadap-BSD-3-Clause.txt", "Cmost-Apache-2.0.txt"):
        assert (samples / "LICENSES" / name).is_file(), name


def test_xp_cut_keeps_the_archive_columns(samples):
    table = Table.read(samples / "gaia_xp" / "xp_continuous_combined_chunk0_20rows.fits")
    assert len(table) == 20 and len(table.colnames) == 223
    assert table.colnames[:3] == ["source_id", "bp_n_relevant_bases", "rp_n_relevant_bases"]
    assert table["source_id"].dtype.kind == "i" and table["source_id"].dtype.itemsize == 8
    assert table["bp_coeff_0"].dtype.kind == "f" and table["bp_coeff_0"].dtype.itemsize == 4
    assert XP_PARTNERS <= set(table["source_id"].tolist())
    assert np.all(np.diff(table["source_id"]) > 0)   # the chunk's order is kept
