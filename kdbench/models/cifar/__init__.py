"""The CIFAR KD zoo (filled in by the zoo modules)."""
