"""Task specifications and graph checks: what may be added, without a database."""

import json

import pytest

from bridge.graph import (
    GraphError,
    TaskSpec,
    check_new_graph,
    find_cycle,
    make_spec,
    parse_graph,
    parse_payload,
    same_definition,
)


def spec(task_id, *deps, **kw):
    return make_spec(task_id=task_id, dependencies=deps, **kw)


def assert_is_cycle(cycle, specs):
    """``cycle`` is a closed walk along real dependency edges."""
    deps = {s.id: set(s.dependencies) for s in specs}
    assert cycle is not None
    assert len(cycle) >= 2
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1, "no node repeats inside the cycle"
    for node, nxt in zip(cycle, cycle[1:], strict=False):
        assert nxt in deps[node], f"{node!r} does not depend on {nxt!r}"


# --------------------------------------------------------------------------- parse_graph


def test_parse_a_full_task():
    text = json.dumps(
        [
            {"id": "a"},
            {
                "id": "b",
                "description": "second",
                "kind": "echo",
                "payload": {"n": [1, 2]},
                "dependencies": ["a", "a"],
                "priority": -3,
                "max_attempts": 4,
                "timeout": 60,
            },
        ]
    )
    a, b = parse_graph(text)
    assert a == TaskSpec(id="a")
    assert b == TaskSpec(
        id="b",
        description="second",
        kind="echo",
        payload={"n": [1, 2]},
        dependencies=("a",),  # repeats collapse, order kept
        priority=-3,
        max_attempts=4,
        timeout=60,
    )


def test_null_values_mean_the_defaults():
    (a,) = parse_graph(
        '[{"id": "a", "description": null, "kind": null, "dependencies": null,'
        ' "priority": null, "max_attempts": null, "timeout": null}]'
    )
    assert a == TaskSpec(id="a")


def test_empty_list_is_an_empty_graph():
    assert parse_graph("[]") == []


@pytest.mark.parametrize("text", ["", "[", "{'id': 'a'}", '[{"id": "a"},]', "nul"])
def test_malformed_json_is_refused(text):
    with pytest.raises(GraphError, match="graph.json is not valid JSON"):
        parse_graph(text, source="graph.json")


@pytest.mark.parametrize("text", ['{"id": "a"}', '"a"', "42", "null"])
def test_top_level_must_be_a_list(text):
    with pytest.raises(GraphError, match="must hold a JSON list"):
        parse_graph(text)


@pytest.mark.parametrize("item", ['"a"', "1", "null", '["a"]'])
def test_every_item_must_be_an_object(item):
    with pytest.raises(GraphError, match=r"item 1 is not an object"):
        parse_graph(f'[{{"id": "ok"}}, {item}]')


def test_unknown_keys_are_refused_and_named():
    with pytest.raises(GraphError, match=r"item 0 \('a'\): unknown key\(s\) depends, prio"):
        parse_graph('[{"id": "a", "prio": 1, "depends": ["b"]}]')


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({}, "'id' must be a string"),
        ({"id": 7}, "'id' must be a string"),
        ({"id": None}, "'id' must be a string"),
        ({"id": "a", "dependencies": "b"}, "'dependencies' must be a list"),
        ({"id": "a", "dependencies": ["b", 1]}, "'dependencies' must be a list"),
        ({"id": "a", "description": 5}, "'description' must be a string"),
        ({"id": "a", "kind": ["x"]}, "'kind' must be a string"),
        ({"id": "a", "priority": "high"}, "'priority' must be an integer"),
        ({"id": "a", "priority": 1.5}, "'priority' must be an integer"),
        ({"id": "a", "priority": True}, "'priority' must be an integer"),
        ({"id": "a", "max_attempts": "3"}, "'max_attempts' must be an integer"),
        ({"id": "a", "timeout": "2"}, "'timeout' must be a number of seconds"),
        ({"id": "a", "timeout": False}, "'timeout' must be a number of seconds"),
    ],
)
def test_wrong_types_are_refused(item, message):
    with pytest.raises(GraphError, match=message):
        parse_graph(json.dumps([item]))


@pytest.mark.parametrize("deps", ['""', "{}", "false", "0"])
def test_falsy_non_list_dependencies_are_refused(deps):
    with pytest.raises(GraphError, match="'dependencies' must be a list"):
        parse_graph(f'[{{"id": "a", "dependencies": {deps}}}]')


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_constants_are_refused(constant):
    with pytest.raises(GraphError, match="not valid JSON"):
        parse_graph(f'[{{"id": "a", "payload": {{"x": {constant}}}}}]')


@pytest.mark.parametrize("task_id", ["", " ", "\t\n"])
def test_empty_id_is_refused(task_id):
    with pytest.raises(GraphError, match="task id must not be empty"):
        parse_graph(json.dumps([{"id": task_id}]))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"id": "a", "kind": ""}, "kind must not be empty"),
        ({"id": "a", "max_attempts": 0}, "max_attempts must be at least 1"),
        ({"id": "a", "timeout": 0}, "timeout must be a number of seconds above 0"),
    ],
)
def test_values_that_cannot_work_are_refused(item, message):
    with pytest.raises(GraphError, match=message):
        parse_graph(json.dumps([item]))


def test_parse_payload():
    assert parse_payload(None) is None
    assert parse_payload('{"a": [1, "é"]}') == {"a": [1, "é"]}
    with pytest.raises(GraphError, match="--payload is not valid JSON"):
        parse_payload("{a: 1}")


# --------------------------------------------------------------------------- check_new_graph


def test_a_valid_dag_passes():
    # Given a diamond plus a task depending on something already stored
    specs = [spec("a"), spec("b", "a"), spec("c", "a"), spec("d", "b", "c", "old")]
    # Then nothing is raised
    check_new_graph(specs, existing=["old"])
    assert find_cycle(specs) is None


def test_duplicate_id_is_refused():
    with pytest.raises(GraphError, match="duplicate task id 'a'"):
        check_new_graph([spec("a"), spec("b"), spec("a")], existing=[])


def test_unknown_dependency_is_refused():
    with pytest.raises(GraphError, match="task 'b' depends on unknown task 'ghost'"):
        check_new_graph([spec("a"), spec("b", "a", "ghost")], existing=["other"])


def test_self_dependency_is_refused():
    with pytest.raises(GraphError, match="task 'a' depends on itself"):
        check_new_graph([spec("a", "a")], existing=[])


def test_two_cycle_is_refused_and_named():
    with pytest.raises(GraphError) as info:
        check_new_graph([spec("a", "b"), spec("b", "a")], existing=[])
    message = str(info.value)
    assert message.startswith("dependency cycle: ")
    assert message in (
        "dependency cycle: 'a' -> 'b' -> 'a'",
        "dependency cycle: 'b' -> 'a' -> 'b'",
    )


def test_three_cycle_is_refused_and_named():
    # Given x -> y -> z -> x, plus a task hanging off the cycle and an unrelated one
    specs = [spec("free"), spec("x", "y"), spec("y", "z"), spec("z", "x"), spec("tail", "x")]
    with pytest.raises(GraphError, match="dependency cycle") as info:
        check_new_graph(specs, existing=[])
    # Then the message names exactly the three tasks of the cycle, in order
    named = str(info.value).removeprefix("dependency cycle: ").split(" -> ")
    assert_is_cycle([n.strip("'") for n in named], specs)
    assert {n.strip("'") for n in named} == {"x", "y", "z"}


def test_payload_over_the_limit_is_refused():
    big = spec("big", payload="x" * 100)
    with pytest.raises(
        GraphError, match=r"task 'big': payload is 102 bytes, over the limit of 101"
    ):
        check_new_graph([big], existing=[], max_payload=101)
    check_new_graph([big], existing=[], max_payload=102)  # exactly at the limit is fine


def test_payload_limit_counts_bytes_not_characters():
    wide = spec("wide", payload="é" * 50)  # 100 bytes in UTF-8, plus 2 quotes
    with pytest.raises(GraphError, match="payload is 102 bytes"):
        check_new_graph([wide], existing=[], max_payload=60)


# --------------------------------------------------------------------------- find_cycle


def test_find_cycle_on_an_acyclic_graph():
    assert find_cycle([]) is None
    assert find_cycle([spec("a"), spec("b", "a"), spec("c", "b", "a")]) is None


def test_find_cycle_ignores_dependencies_outside_the_specs():
    assert find_cycle([spec("a", "stored"), spec("b", "a", "stored")]) is None


@pytest.mark.parametrize(
    "specs",
    [
        [spec("a", "b"), spec("b", "a")],
        [spec("a", "b"), spec("b", "c"), spec("c", "a")],
        # the cycle is reachable only through tasks outside it
        [spec("t1", "t2"), spec("t2", "c1"), spec("c1", "c2"), spec("c2", "c3"), spec("c3", "c1")],
        # two independent cycles
        [spec("p", "q"), spec("q", "p"), spec("r", "s"), spec("s", "r"), spec("ok")],
    ],
    ids=["2-cycle", "3-cycle", "behind-a-tail", "two-cycles"],
)
def test_find_cycle_returns_a_real_cycle(specs):
    assert_is_cycle(find_cycle(specs), specs)


def test_find_cycle_on_a_large_chain_is_fast_and_correct():
    chain = [spec("n0")] + [spec(f"n{i}", f"n{i - 1}") for i in range(1, 5000)]
    assert find_cycle(chain) is None
    closed = chain[1:] + [spec("n0", "n4999")]
    cycle = find_cycle(closed)
    assert_is_cycle(cycle, closed)
    assert len(cycle) == 5001


# --------------------------------------------------------------------------- same_definition


def test_same_definition():
    base = spec("a", "x", "y", kind="echo", payload={"k": 1}, priority=2, max_attempts=3)
    assert same_definition(
        base, spec("a", "x", "y", kind="echo", payload={"k": 1}, priority=2, max_attempts=3)
    )
    assert not same_definition(
        base, spec("a", "y", "x", kind="echo", payload={"k": 1}, priority=2, max_attempts=3)
    )
    assert not same_definition(
        base, spec("a", "x", "y", kind="echo", payload={"k": 2}, priority=2, max_attempts=3)
    )
    assert not same_definition(
        base,
        spec("a", "x", "y", kind="echo", payload={"k": 1}, priority=2, max_attempts=3, timeout=5),
    )
