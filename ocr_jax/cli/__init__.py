"""Command-line entry points installed with the package (pyproject's [project.scripts]): ``ocr-jax-train``."""


def start_script(argv, *, hint: str = "") -> None:
    """The first line of an absl script's ``main(argv)``: refuses positional arguments (absl stops reading flags at
    the first one, so a mistyped flag would otherwise be ignored silently; ``hint`` is appended to the message) and
    keeps the INFO logs of jax, orbax and TFDS off unless ``--verbosity`` is given (``--verbosity=0`` shows them)."""
    from absl import app, flags, logging

    if argv is not None and len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}{hint}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
