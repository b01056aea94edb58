import pytest


class TestGrouped:
    def test_in_class(self):
        assert True

    @pytest.mark.skip(reason="deliberate skip")
    def test_skipped(self):
        raise AssertionError("never runs")
