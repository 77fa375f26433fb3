"""The error boundary: every error crosses the wire and HTTP as the same class,
with its fields, and answers HTTP with its class's status."""

from __future__ import annotations

import inspect

import pytest

from dtwz import errors
from dtwz.errors import (
    AccessDenied,
    ClusterError,
    CodeTimeout,
    CorruptObject,
    DtwzError,
    InvalidArgument,
    InvalidName,
    NameExists,
    NameNotFound,
    ObjectMoved,
    ObjectNotFound,
    PointerOutOfBounds,
    QuotaExceeded,
    UnknownSession,
)
from dtwz.wire.codec import error_reply, raise_error

ALL = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, DtwzError) and cls.__module__ == errors.__name__
]


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ObjectNotFound("x"), 404),
        (InvalidArgument("x"), 400),
        (InvalidName("x"), 400),  # a NamespaceError (409) and an InvalidArgument: usage
        (NameExists("x"), 409),
        (NameNotFound("x"), 404),
        (PointerOutOfBounds("x"), 400),
        (CorruptObject("x"), 500),  # a FormatError (400), but the fault is the store's
        (ObjectMoved("x", home="n2", epoch=3), 503),
        (CodeTimeout("x"), 504),
        (UnknownSession("x"), 401),
        (AccessDenied("x"), 403),
        (QuotaExceeded("x"), 413),
        (DtwzError("x"), 500),
        (ValueError("a bug"), 500),
    ],
)
def test_http_status_comes_from_the_class(exc: BaseException, status: int) -> None:
    assert errors.http_status(exc) == status


def test_a_new_subclass_inherits_its_base_status() -> None:
    class LocalTrouble(NameNotFound):
        pass

    assert errors.http_status(LocalTrouble("x")) == 404


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_class_round_trips_by_name(cls: type[DtwzError]) -> None:
    exc = cls("something happened") if cls is not ObjectMoved else cls("o", home="n1", epoch=2)
    kind, message, fields = errors.describe(exc)
    again = errors.rebuild(kind, message, fields)
    assert type(again) is cls
    assert str(again) == str(exc)


def test_object_moved_carries_its_fields() -> None:
    exc = ObjectMoved("object 00ff", home="n3", epoch=7)
    assert (exc.home, exc.epoch) == ("n3", 7)
    assert errors.describe(exc)[2] == {"home": "n3", "epoch": 7}
    # over HTTP the fields travel as JSON keys
    again = errors.rebuild("ObjectMoved", "no text to parse", {"home": "n3", "epoch": 7})
    assert isinstance(again, ObjectMoved)
    assert (again.home, again.epoch) == ("n3", 7)


def test_object_moved_over_the_peer_wire_keeps_home_and_epoch() -> None:
    with pytest.raises(ObjectMoved) as caught:
        raise_error(error_reply(ObjectMoved("object 00ff", home="n2", epoch=4)))
    assert (caught.value.home, caught.value.epoch) == ("n2", 4)


def test_object_moved_without_a_home_says_so() -> None:
    exc = ObjectMoved("somewhere else")
    assert exc.home is None and exc.epoch is None
    assert errors.describe(exc)[2] == {}


def test_unknown_kinds_keep_their_name_in_the_message() -> None:
    again = errors.rebuild("SomethingNew", "boom", unknown=ClusterError)
    assert type(again) is ClusterError
    assert str(again) == "SomethingNew: boom"
    assert type(errors.rebuild("SomethingNew", "boom")) is DtwzError


def test_only_classes_of_the_error_module_are_rebuilt() -> None:
    # names that exist elsewhere, or in the module but are not errors, stay unknown
    for kind in ["ValueError", "SystemExit", "re", "describe", "_CLASSES"]:
        assert type(errors.rebuild(kind, "x")) is DtwzError


def test_describe_bounds_and_cleans_the_text() -> None:
    kind, message, _ = errors.describe(InvalidArgument("\udcff" + "x" * 10_000))
    assert kind == "InvalidArgument"
    assert len(message) <= 4096 + 3
    message.encode("utf-8")  # valid UTF-8: always encodes
    assert errors.describe(ValueError("a bug"))[0] == "DtwzError"
