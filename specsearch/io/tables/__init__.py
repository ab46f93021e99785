"""Read any tabular file into a pyarrow Table: CSV, ECSV, FITS tables, VOTable, Parquet, Arrow.

One entry point, :func:`read_table`, used for Gaia XP tables and for label tables
(``specsearch ingest --labels FILE --on COLUMN``). The format is recognised from the file's
first bytes (Parquet/Arrow magic, ``SIMPLE  =``, ``<?xml``/``<VOTABLE``, ``# %ECSV``; gzip is
looked through) and only then from the extension, so a misnamed file still reads
(:func:`detect_table_format`).

Array cells come back as Arrow list columns whatever the format: the Gaia archive's CSV
writes arrays as ``"(1.0, 2.0, ...)"`` strings, ECSV/GaiaXPy as ``"[1.0, 2.0]"``; a string
column whose every non-null cell is bracketed like that and parses as numbers becomes
``list<double>`` (``nan``/``null`` entries become NaN). FITS vector columns become
fixed-size lists, VOTable variable-length arrays lists; masked/TNULL cells become nulls.
Table metadata (FITS header cards, ECSV ``meta``, VOTable PARAMs, e.g. GaiaXPy's
``sampling``) is kept as JSON under the schema metadata key ``b"specsearch.meta"``.

Every failure (empty, truncated, garbled, missing column) is a :class:`ReaderError` naming
the file. :func:`iter_table_batches` streams Parquet and CSV in bounded memory; other
formats are read whole and then sliced. Modules: ``detect`` (format), ``columns`` (array
strings, selection), ``csv_format``, ``astropy_formats`` (FITS, VOTable, ECSV), ``reader``
(the entry points).
"""

from specsearch.io.tables.astropy_formats import META_KEY, astropy_to_arrow
from specsearch.io.tables.columns import parse_array_strings
from specsearch.io.tables.csv_format import CSV_BLOCK_BYTES
from specsearch.io.tables.detect import TABLE_FORMATS, detect_table_format
from specsearch.io.tables.reader import iter_table_batches, read_column_names, read_table

__all__ = ["CSV_BLOCK_BYTES", "META_KEY", "TABLE_FORMATS", "astropy_to_arrow",
           "detect_table_format", "iter_table_batches", "parse_array_strings",
           "read_column_names", "read_table"]
