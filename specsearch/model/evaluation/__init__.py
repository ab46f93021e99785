"""Evaluating the aligned model: ``specsearch evaluate`` on synthetic pairs and on every real
set (parameters, uncertainties, identity, the hunt, templates), its metrics, figures, text
report and the encoder speed comparison."""
