"""What users run on top of the library: cut-outs, the HTTP service and its page, the demo,
evaluation and the EDA report. No torch."""
