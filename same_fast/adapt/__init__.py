"""Teacher-student adaptation of the enhancer to a clinic's unlabeled images (SPEC section 5)."""
