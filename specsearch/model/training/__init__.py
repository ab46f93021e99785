"""Training the aligned model: the paired-catalog cache, augmentations, losses, ``train``,
``train-heads``, ``finetune`` on real spectra and the calibration of the heads'
uncertainties. Inference (:mod:`specsearch.model`) never imports this package."""
