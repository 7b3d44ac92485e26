"""Command-line entry points installed with the package (pyproject's [project.scripts]): ``ocr-jax-train``."""
