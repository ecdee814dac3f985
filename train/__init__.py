"""Training, data preparation and evaluation for MedCondDiff (not imported by the library)."""
