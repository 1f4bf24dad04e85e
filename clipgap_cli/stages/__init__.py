"""The pipeline stages, one module each: the logic behind the `clipgap` commands."""
