"""Chest X-ray / lung CT classification library layer.

Modules: ``models`` (Keras builders by name; which model uses which builder is
declared in :mod:`covid_imaging.registry`), ``transfer`` (weight transfer,
freezing, head swap), ``training`` (fit loops, undersampling, tf.data input),
``evaluation`` (metrics with bootstrap CIs, tables, figures), ``gradcam``
(Grad-CAM, saliency, heatmap diagnostics), ``masking`` (lung-mask image edits) and
``shortcut`` (lung-less shortcut audit). Import the modules directly: importing this
package does not import TensorFlow.
"""
