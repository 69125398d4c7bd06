"""The Kaggle formats: run-length encoding and submissions (read, check, write, merge). No torch."""
