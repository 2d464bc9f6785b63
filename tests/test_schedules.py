import pytest

from dualprop.schedules import layer_order, parse_schedule


@pytest.mark.parametrize(
    "schedule, depth, passes, expected",
    [
        ("forward", 3, 1, [1, 2, 3]),
        ("forward", 3, 2, [1, 2, 3, 1, 2, 3]),
        ("backward", 4, 1, [4, 3, 2, 1]),
        ("backward", 2, 2, [2, 1, 2, 1]),
        ("forward-backward", 4, 1, [4, 3, 2, 1]),
        ("forward-backward", 4, 2, [4, 3, 2, 1, 2, 3, 4, 3, 2, 1, 1]),
        ("forward-backward", 3, 3, [3, 2, 1, 2, 3, 2, 1, 1, 2, 3, 2, 1, 1]),
        ("odd-even", 5, 1, [1, 3, 5, 2, 4]),
        ("odd-even", 4, 2, [1, 3, 2, 4, 1, 3, 2, 4]),
        ("even-odd", 5, 1, [2, 4, 1, 3, 5]),
        ("forward", 1, 2, [1, 1]),
    ],
)
def test_layer_order_matches_definition(schedule, depth, passes, expected):
    assert layer_order(schedule, depth, passes) == expected


@pytest.mark.parametrize(
    "alias, canonical, passes",
    [
        ("fw3", "forward", 3),
        ("bw1", "backward", 1),
        ("fwbw2", "forward-backward", 2),
        ("oddeven", "odd-even", 1),
        ("evenodd4", "even-odd", 4),
        ("fw", "forward", 1),
    ],
)
def test_aliases_resolve(alias, canonical, passes):
    assert parse_schedule(alias) == (canonical, passes)


def test_alias_number_and_explicit_passes_must_agree():
    assert parse_schedule("fw3", 3) == ("forward", 3)
    with pytest.raises(ValueError, match="3 passes"):
        parse_schedule("fw3", 2)


@pytest.mark.parametrize(
    "name, passes", [("sideways", 1), ("fw0", None), ("forward", 0), ("forward", 1.5), ("forward", True)]
)
def test_bad_schedules_raise(name, passes):
    with pytest.raises(ValueError):
        parse_schedule(name, passes)
