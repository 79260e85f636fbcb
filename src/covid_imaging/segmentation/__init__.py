"""Lung segmentation library: models, losses, tf.data input, augmentation, training,
post-processing, metrics and plots.

Submodules are imported explicitly (``from covid_imaging.segmentation.models import ...``)
so that importing the package does not load TensorFlow for the NumPy-only parts
(post-processing, metrics, plots).
"""
