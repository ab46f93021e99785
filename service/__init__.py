"""The specsearch HTTP service: a FastAPI app (``service.app.create_app``) and a web page.

Thin by design: every answer comes from the library (:mod:`specsearch.query`,
:mod:`specsearch.model`, :mod:`specsearch.anomaly`, :mod:`specsearch.hunt`).
"""
