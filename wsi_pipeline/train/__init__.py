"""Training: losses (this package's ``losses``), metrics and the training loops of the four papers."""
