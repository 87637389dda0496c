"""Training the built-in ``mini`` diffusion backbone (``meddift train-mini``)."""
