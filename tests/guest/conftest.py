"""Guest tests: every case of every guest test program is a pytest item
(``vuser.guest.pytest_plugin``); the programs and their devices are listed in
``guest_tests.toml``."""

from vuser.guest.pytest_plugin import pytest_collect_file  # noqa: F401 - the hook
