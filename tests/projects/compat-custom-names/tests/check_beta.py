import pytest


class CheckGroup:
    def check_in_class(self):
        assert True

    @pytest.mark.skip(reason="deliberate skip")
    def check_skipped(self):
        raise AssertionError("never runs")
