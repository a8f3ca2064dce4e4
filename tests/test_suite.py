"""The suite itself: every slow test has fast counterparts that the default run executes
(tests/helpers/counterparts.py), so a change that breaks a slow test's subject fails without `-m slow`."""

from conftest import COLLECTED
from helpers.counterparts import SLOW_COUNTERPARTS, counterparts_of


def named(test_id: str, collected: dict[str, bool]) -> list[str]:
    """The collected tests an id names: itself, or every parameter of a function."""
    return [other for other in collected if other == test_id or other.split("[")[0] == test_id]


def test_every_slow_test_has_fast_counterparts_in_the_default_run(request):
    collected = request.config.stash[COLLECTED]
    files = {test_id.split("::")[0] for test_id in collected}
    slow = [test_id for test_id, is_slow in collected.items() if is_slow]
    unlisted = [test_id for test_id in slow if counterparts_of(test_id) is None]
    assert not unlisted, f"add the fast counterparts of these slow tests to tests/helpers/counterparts.py: {unlisted}"
    for test_id in slow:
        for counterpart in counterparts_of(test_id):
            if counterpart.split("::")[0] not in files:
                continue  # a run of some files only
            found = named(counterpart, collected)
            assert found, f"{test_id}: its counterpart {counterpart} does not exist (tests/helpers/counterparts.py)"
            assert not any(collected[other] for other in found), f"{test_id}: its counterpart {counterpart} is slow"
    for test_id in SLOW_COUNTERPARTS:
        if test_id.split("::")[0] in files:
            assert any(collected[other] for other in named(test_id, collected)), \
                f"{test_id} is listed in tests/helpers/counterparts.py but is not a slow test"
