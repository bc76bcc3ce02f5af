"""The handler registry: a worker runs only code registered under a task's kind."""

import sys

import pytest

from bridge.workers import registry
from bridge.workers.registry import HandlerError, get_handler, handler, is_registered, load_modules


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    """Each test sees the real registry, and its registrations vanish afterwards."""
    registry._load_builtins()
    monkeypatch.setattr(registry, "_HANDLERS", dict(registry._HANDLERS))


def test_builtin_handlers_are_registered():
    assert {"noop", "echo", "sleep", "fail"} <= set(registry.registered())
    assert get_handler("echo")({"a": 1}) == {"a": 1}
    assert get_handler("noop")(None) is None


def test_registered_handler_is_found_by_name():
    @handler("unit-double")
    def double(payload):
        return payload * 2

    assert get_handler("unit-double") is double
    assert is_registered("unit-double")
    assert "unit-double" in registry.registered()


def test_second_registration_under_the_same_name_raises():
    @handler("unit-dup")
    def first(payload):
        return 1

    with pytest.raises(ValueError, match="a handler named 'unit-dup' is already registered"):

        @handler("unit-dup")
        def second(payload):
            return 2

    # the first registration stays in force
    assert get_handler("unit-dup") is first


def test_registering_a_builtin_name_again_raises():
    with pytest.raises(ValueError, match="'echo' is already registered"):
        handler("echo")(lambda payload: payload)


def test_registering_the_same_function_twice_is_harmless():
    def same(payload):
        return payload

    handler("unit-same")(same)
    handler("unit-same")(same)  # e.g. a module imported twice
    assert get_handler("unit-same") is same


@pytest.mark.parametrize("name", ["", None, 3])
def test_handler_needs_a_non_empty_name(name):
    with pytest.raises(ValueError, match="non-empty name"):
        handler(name)


def test_unknown_kind_raises_handler_error_listing_the_known_ones():
    with pytest.raises(
        HandlerError, match=r"no handler registered for kind 'nope' \(known: .*echo"
    ):
        get_handler("nope")
    assert not is_registered("nope")


def test_handler_error_is_a_lookup_error():
    assert issubclass(HandlerError, LookupError)


def test_loading_a_missing_module_raises_handler_error():
    with pytest.raises(HandlerError, match="cannot import handler module 'no_such_module_xyz'"):
        load_modules(["no_such_module_xyz"])


def test_loading_a_module_that_fails_on_import_raises_handler_error(tmp_path, monkeypatch):
    (tmp_path / "unit_broken_handlers.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "unit_broken_handlers", raising=False)
    with pytest.raises(HandlerError, match="unit_broken_handlers.*boom at import"):
        load_modules(["unit_broken_handlers"])


def test_loading_a_module_registers_its_handlers(tmp_path, monkeypatch):
    (tmp_path / "unit_good_handlers.py").write_text(
        "from workers import handler\n\n"
        "@handler('unit-from-module')\n"
        "def run(payload):\n"
        "    return 'ran'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "unit_good_handlers", raising=False)
    load_modules(["unit_good_handlers"])
    assert get_handler("unit-from-module")(None) == "ran"
    monkeypatch.delitem(sys.modules, "unit_good_handlers", raising=False)


def test_loading_a_module_with_a_clashing_name_raises_handler_error(tmp_path, monkeypatch):
    (tmp_path / "unit_clash_handlers.py").write_text(
        "from workers import handler\n\n@handler('echo')\ndef mine(payload):\n    return 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "unit_clash_handlers", raising=False)
    with pytest.raises(HandlerError, match="already registered"):
        load_modules(["unit_clash_handlers"])
    monkeypatch.delitem(sys.modules, "unit_clash_handlers", raising=False)
