"""errors.py: the chain of causes under a client's exception."""

from __future__ import annotations

from chatkit_server.errors import causes


def test_causes_walk_from_the_error_down_each_once() -> None:
    reset = ConnectionResetError("reset")
    wrapped = RuntimeError("transport")
    wrapped.__cause__ = reset
    outer = ValueError("client")
    outer.__context__ = wrapped
    # A cycle (an exception raised while handling itself) ends the walk.
    reset.__context__ = outer

    assert list(causes(outer)) == [outer, wrapped, reset]


def test_an_explicit_cause_is_followed_before_the_context() -> None:
    cause, context = OSError("cause"), KeyError("context")
    error = RuntimeError("error")
    error.__cause__, error.__context__ = cause, context

    assert list(causes(error)) == [error, cause]
