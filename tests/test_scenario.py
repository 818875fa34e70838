import pytest

from labkit import BadInput, Knob, Metric, Scenario, all_scenarios, get


def test_builtin_scenarios_are_registered_with_a_broken_variant_and_fixes():
    names = [s.name for s in all_scenarios()]
    assert "thread-storm" in names
    for s in all_scenarios():
        assert s.broken_variant and s.fixes and s.main_fix in s.fixes and s.source
        assert s.speed_pair is None or set(s.speed_pair) <= set(s.fixes)


def test_unknown_names_say_what_is_allowed():
    with pytest.raises(BadInput, match="unknown scenario 'nope'; allowed: .*thread-storm"):
        get("nope")
    with pytest.raises(BadInput, match="unknown variant 'nope' of thread-storm; allowed: broken, one-thread"):
        get("thread-storm").get_variant("nope")
    with pytest.raises(BadInput, match="unknown setting 'bogus'"):
        get("thread-storm").knob_values({"bogus": 1})


@pytest.mark.parametrize("value", [0, -3])
def test_thread_counts_below_one_are_refused(value):
    with pytest.raises(BadInput, match=r"threads=-?\d+ is out of range; allowed: 1 <= threads"):
        get("thread-storm").knob_values({"threads": value})


def test_knobs_coerce_text_from_the_command_line():
    values = get("thread-storm").knob_values({"workers": "3", "top_p": "0.5"})
    assert values["workers"] == 3 and values["top_p"] == 0.5
    with pytest.raises(BadInput, match="workers must be int"):
        Knob("workers", 1, low=1).check("many")


def test_a_scenario_defined_by_decorator():
    mine = Scenario("mine", summary="test", metrics=(Metric("x", "1"),))

    @mine.variant("broken", broken=True)
    def first():
        """Shares a list between threads."""
        return {"x": 1}

    assert mine.get_variant("broken").summary == "Shares a list between threads."
    assert mine.broken_variant == "broken" and mine.fixes == []
