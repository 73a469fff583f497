"""Hostile bytes through iter_messages: only RawMessage / LoadError come out, within the limit."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsguard.mail.source import LoadError, RawMessage, iter_messages

DATA = Path(__file__).resolve().parents[2] / "data"
SEEDS = sorted(
    p
    for p in [
        *(DATA / "mail-parser-mails").iterdir(),
        *(DATA / "stalwart-mail-parser-eml").rglob("*.eml"),
    ]
    if p.is_file() and p.name != "README.md"
)
SEED_BYTES = {str(p.relative_to(DATA)): p.read_bytes() for p in SEEDS}
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _check(paths: list[Path], limit: int) -> list[RawMessage | LoadError]:
    results = list(iter_messages([str(p) for p in paths], max_message_bytes=limit))
    assert results, "every input yields at least one result"
    for result in results:
        assert isinstance(result, RawMessage | LoadError)
        if isinstance(result, RawMessage):
            assert len(result.data) <= limit
            assert result.size >= 0
            if not result.truncated and result.kind in ("eml", "maildir", "mbox"):
                assert len(result.data) <= result.size  # bytes are kept, never invented
        else:
            assert result.problem
            assert "\n" not in result.problem
    return results


@FUZZ
@given(content=st.binary(max_size=4096), limit=st.integers(min_value=1, max_value=2048))
def test_random_bytes(content: bytes, limit: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input"
        path.write_bytes(content)
        _check([path], limit)


# A mutation is drawn as a small recipe (so a failing example prints readably) and applied to
# a corpus file: (operation, position as a fraction of the length, size parameter).
Mutation = tuple[str, float, int]
MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["truncate", "flip", "from", "nul", "huge", "crlf", "blank"]),
        st.floats(min_value=0.0, max_value=1.0),
        st.integers(min_value=1, max_value=255),
    ),
    min_size=1,
    max_size=4,
)


def _mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    for operation, where, amount in mutations:
        position = int(len(data) * where)
        if operation == "truncate":
            data = data[:position]
        elif operation == "flip" and data:
            index = min(position, len(data) - 1)
            data = data[:index] + bytes([data[index] ^ amount]) + data[index + 1 :]
        elif operation == "from":
            data = data[:position] + b"\nFrom attacker@example.net Mon Jan 1\n" + data[position:]
        elif operation == "nul":
            data = data[:position] + b"\x00" * amount + data[position:]
        elif operation == "huge":  # a line far longer than any read chunk
            data = data[:position] + b"H" * (amount * 1000) + data[position:]
        elif operation == "crlf":
            data = data.replace(b"\n", b"\r\n")
        elif operation == "blank":
            data = b"\n\n" + data
    return data


@FUZZ
@given(
    name=st.sampled_from(sorted(SEED_BYTES)),
    mutations=MUTATIONS,
    limit=st.sampled_from([1, 64, 1000, 65_536, 10_000_000]),
    prefix=st.sampled_from([b"", b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n", b"\xff\xfe"]),
)
def test_mutated_corpus_files(
    name: str, mutations: list[Mutation], limit: int, prefix: bytes
) -> None:
    content = _mutate(SEED_BYTES[name], mutations)
    with tempfile.TemporaryDirectory() as folder:
        # The mutated file alone, then inside a directory walk next to a Maildir.
        path = Path(folder) / name.replace("/", "-")
        path.write_bytes(prefix + content)
        maildir = Path(folder) / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        (maildir / "new" / "1.host").write_bytes(content)
        single = _check([path], limit)
        walked = _check([Path(folder)], limit)
        # A walk may turn an error into a "skipped" note, but finds the same messages.
        found = [r for r in walked if r.path == str(path)]
        assert [r for r in found if isinstance(r, RawMessage)] == [
            r for r in single if isinstance(r, RawMessage)
        ]
        assert len(found) == len(single)
