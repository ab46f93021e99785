"""Survey readers and writers: LAMOST FITS, Gaia XP tables, generic spectra, catalogs.

Import the module you need (``specsearch.io.lamost``, ``specsearch.io.gaia_xp``,
``specsearch.io.catalog``...); ``specsearch.io.registry.read_spectra`` reads any supported
file by looking at its structure.
"""
