"""Training: the source enhancer (``source``) and the pseudo-label picker (``picker``)."""
