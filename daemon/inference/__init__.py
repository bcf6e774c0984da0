"""Inference: ONNX Runtime sessions, the segmenter and classifier operators, the batch analyser."""
