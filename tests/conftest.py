"""Test-session settings: one JAX compile cache for the whole run, never the user's own."""

import os
import tempfile


def pytest_configure(config):
    # every test (and every `twoway` subprocess a test starts) shares one fresh compile cache,
    # so a program compiled once in the run is reused, and the user's cache folder is left alone
    if "TWOWAY_TEST_KEEP_CACHE" not in os.environ:
        os.environ["TWOWAY_CACHE_DIR"] = tempfile.mkdtemp(prefix="twoway-test-cache-")
