"""Training, evaluation and prediction on Lightning."""
