import pytest

import vbus


@pytest.fixture
def cache(tmp_path):
    with vbus.CacheManager(home=tmp_path / "home") as manager:
        yield manager
