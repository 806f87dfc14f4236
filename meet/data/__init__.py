"""Data sets (Karpathy JSON images, precomputed features, the Shapes benchmark), vocabulary and batching."""
