"""The notebook API's tests use the scoring tests' bundle and counts file, to compare with ``celltype score``."""

from tests.service.scoring.conftest import bundle_dir, counts_file  # noqa: F401 (fixtures)
