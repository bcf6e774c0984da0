"""Imaging: arrays in, arrays out (frame checks and decoding, pixel scale, the model-free pipeline steps)."""
