"""Results cross between ``--jobs`` processes unchanged, and two workers give the one-process
results in the same order."""

import pickle
from pathlib import Path

from dsguard.batch import scan_stream
from dsguard.config import load_config
from dsguard.mail.source import LoadError, RawMessage, iter_messages
from dsguard.scan import Scanner

TESTS = Path(__file__).parents[2]
EXO = TESTS / "corpus" / "configs" / "contoso-exo.toml"


def _items() -> list[RawMessage | LoadError]:
    paths = [str(p) for p in sorted((TESTS / "corpus" / "cases").glob("*.eml"))]
    return list(iter_messages([*paths, "/nonexistent/missing.eml"], max_message_bytes=1 << 20))


def test_results_survive_multiprocessing_pickling_unchanged() -> None:
    from multiprocessing.reduction import ForkingPickler

    cfg = load_config(EXO, {"limits": {"decode_qr": False}})
    scanner = Scanner(cfg)
    items = _items()
    results = [scanner.scan_item(item) for item in items]
    assert any(r.error for r in results) and any(r.verdict and r.verdict.findings for r in results)
    for original in (items, results):
        copy = pickle.loads(ForkingPickler.dumps(original))
        assert copy == original
        assert [type(x) for x in copy] == [type(x) for x in original]
    verdict = next(r.verdict for r in results if r.verdict and r.verdict.findings)
    again = pickle.loads(ForkingPickler.dumps(verdict))
    assert again.level is verdict.level and again.action is verdict.action  # same enum members


def test_two_workers_give_the_single_process_results_in_order(tmp_path: Path) -> None:
    cfg = load_config(EXO, {"limits": {"decode_qr": False}})
    mbox = tmp_path / "mixed.mbox"
    cases = sorted((TESTS / "corpus" / "cases").glob("*.eml"))
    with mbox.open("wb") as fh:
        for n in range(3):  # more than a few chunks of work, sizes mixed
            for path in cases:
                data = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From ")
                fh.write(b"From bench@example.org Thu Nov 27 12:00:00 2026\n" + data + b"\n" * (n + 1))
    inputs = [str(mbox), "/nonexistent/missing.eml"]
    one = list(scan_stream(iter_messages(inputs, max_message_bytes=1 << 20), cfg, jobs=1))
    two = list(scan_stream(iter_messages(inputs, max_message_bytes=1 << 20), cfg, jobs=2))
    assert len(one) == 3 * len(cases) + 1
    assert two == one
