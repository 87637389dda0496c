"""Synthetic data: smooth breathing deformations, lung keypoints and the packaged demo pair."""
