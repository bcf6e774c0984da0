"""Training, evaluation and export of leukoscope's reference models.

Torch-free modules: ``data`` (file listing, block split, mask cleaning), ``metrics``,
``evaluate`` (runs the exported ONNX pipeline). Torch is only imported by ``nets``,
``augment``, ``train`` and ``export``; install the ``train`` extra for those.
"""
