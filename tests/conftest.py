"""Session-wide test settings. Area fixtures live in each test folder's conftest.py."""

import os

# keep BLAS/torch from oversubscribing the 2-core CI machine when pytest runs helpers
os.environ.setdefault("OMP_NUM_THREADS", "2")
