"""The test suite, laid out as the repository: tests/<subpackage>/test_<module>.py tests
ocr_jax/<subpackage>/<module>.py (tests/test_<module>.py a top-level module such as ocr_jax/api.py), tests/experiments/
the experiments/ scripts, tests/docs/ and tests/scripts/ what docs/ and scripts/ hold; test_layout.py and
test_install.py the package as a whole.

Every folder is a package (``tests.models.test_air``), so test files may share a basename and import each other and the
helpers here by their full name (``from tests import sharded_step_check``, ``from tests.toy_runs import ...``). A file
that computes the repository root from ``__file__`` counts its depth below it (one ``dirname`` per folder)."""
