"""model.quick_init: the faster __init__ builds exactly what the generated one builds."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from dsguard import model
from dsguard.checks.base import Links, QrResult
from dsguard.mail.addresses import AddressField, Mailbox
from dsguard.mail.envelope import ExoStamps, HopAnalysis
from dsguard.mail.received import ReceivedHop

QUICK = [
    model.TlsInfo,
    model.Envelope,
    model.Attribution,
    model.Finding,
    model.Iocs,
    model.RdsDecision,
    model.Verdict,
    model.MessageSummary,
    model.ScanResult,
    ReceivedHop,
    ExoStamps,
    HopAnalysis,
    Mailbox,
    AddressField,
    QrResult,
    Links,
]


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_same_objects_as_the_generated_init(cls: type) -> None:
    plain = dataclasses.dataclass(frozen=True, slots=True)(
        type(
            cls.__name__,
            (),
            {
                "__annotations__": dict(cls.__annotations__),
                **{
                    f.name: (
                        dataclasses.field(default_factory=f.default_factory)
                        if f.default_factory is not dataclasses.MISSING
                        else f.default
                    )
                    for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING
                },
            },
        )
    )
    required = [
        f
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    args = [object() for _ in required]
    fast = cls(*args)
    slow = plain(*args)
    for f in dataclasses.fields(cls):
        assert getattr(fast, f.name) == getattr(slow, f.name), f.name
    # Every field given, by keyword.
    values = {f.name: object() for f in dataclasses.fields(cls)}
    built = cls(**values)
    assert all(getattr(built, k) is v for k, v in values.items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.__setattr__(dataclasses.fields(cls)[0].name, None)
    with pytest.raises(TypeError):
        cls(*args, **{"no_such_field": 1})
    if required:
        with pytest.raises(TypeError):
            cls()


def test_default_factory_gives_a_new_value_each_time() -> None:
    a = ExoStamps()
    b = ExoStamps()
    assert a.forefront == {} and a.forefront is not b.forefront
    assert (
        model.Verdict(
            model.Level.CLEAN,
            0.0,
            (),
            False,
            model.Attribution(model.AttributionKind.ANONYMOUS),
            model.Action.DELIVER,
        ).iocs
        == model.Iocs()
    )


def test_pickles_and_compares_as_before() -> None:
    env = model.Envelope(model.EnvelopeOrigin.HEADERS, client_ip="192.0.2.1", rcpt_to=("a@b",))
    assert pickle.loads(pickle.dumps(env)) == env
    assert env == dataclasses.replace(env)
    assert hash(env) == hash(
        model.Envelope(**{f.name: getattr(env, f.name) for f in dataclasses.fields(env)})
    )


def test_refuses_what_it_cannot_copy() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Post:
        x: int

        def __post_init__(self) -> None:
            pass

    with pytest.raises(TypeError):
        model.quick_init(Post)
    with pytest.raises(TypeError):
        model.quick_init(
            dataclasses.dataclass(frozen=True)(type("NoSlots", (), {"__annotations__": {"x": int}}))
        )
