"""One TOML file, every mistake reported at once, one line each."""

from pathlib import Path

import pytest

from dsguard.config import load_config
from dsguard.engine import Engine
from dsguard.errors import ConfigError


def test_defaults_load_and_every_finding_has_a_score() -> None:
    cfg = load_config()
    Engine(cfg)  # validate_scoring raises on a finding id without a score
    assert cfg.organization.reject_direct_send == "audit"


def test_user_file_merges_over_defaults(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(
        '[organization]\naccepted_domains = ["Contoso.com", "*.fabrikam.com"]\n'
        "[scoring.scores]\nDS_SELF_ADDRESSED = 4.5\n"
    )
    cfg = load_config(p)
    assert cfg.organization.accepted_domains == ("contoso.com", "*.fabrikam.com")
    assert cfg.scoring.scores["DS_SELF_ADDRESSED"] == 4.5
    assert cfg.scoring.scores["DS_SPOOF_ENVELOPE"] == 6.0  # untouched default


def test_every_mistake_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(
        '[organization]\naccepted_domains = ["not a domain"]\nreject_direct_send = "maybe"\nfoo = 1\n'
        '[[connectors]]\nname = "x"\nsender_ip_ranges = ["300.1.1.1/32"]\nsender_domains = ["*"]\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(p)
    text = "\n".join(info.value.problems)
    assert "organization.accepted_domains" in text and "not a domain" in text
    assert "organization.reject_direct_send" in text
    assert "organization.foo: unknown setting" in text
    assert "300.1.1.1/32" in text and "'*' is not allowed" in text


def test_unknown_finding_in_scores_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[scoring.scores]\nDS_TYPO = 1.0\n")
    with pytest.raises(ConfigError, match="DS_TYPO: unknown finding id"):
        Engine(load_config(p))


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[organization\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml")


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    p = conf_dir / "dsguard.toml"
    p.write_text('[gateway]\nspool_dir = "spool"\n[storage]\nurl = "sqlite:///db/dsguard.sqlite3"\n'
                 '[intel]\nioc_files = ["iocs.txt", "/abs/iocs.txt"]\n')
    cfg = load_config(p)
    assert cfg.gateway.spool_dir == str(conf_dir / "spool")
    assert cfg.storage.url == f"sqlite:///{conf_dir / 'db' / 'dsguard.sqlite3'}"
    assert cfg.intel.ioc_files == (str(conf_dir / "iocs.txt"), "/abs/iocs.txt")
    assert load_config().gateway.spool_dir == "var/spool"  # no file: relative to the working dir


def test_gateway_workers_is_one_to_sixty_four(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    assert load_config(None).gateway.workers == 1
    cfg.write_text("[gateway]\nworkers = 4\n")
    assert load_config(cfg).gateway.workers == 4
    for bad in (0, 65):
        cfg.write_text(f"[gateway]\nworkers = {bad}\n")
        with pytest.raises(ConfigError, match="workers"):
            load_config(cfg)


def test_milter_listens_on_host_port_or_an_absolute_unix_socket_path(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    defaults = load_config(None).milter
    assert (defaults.listen, defaults.socket_mode) == ("127.0.0.1:10041", 0o660)
    cfg.write_text('[milter]\nlisten = "unix:/run/dsguard/milter.sock"\nsocket_mode = 0o666\n')
    milter = load_config(cfg).milter
    assert (milter.listen, milter.socket_mode) == ("unix:/run/dsguard/milter.sock", 0o666)
    for bad, why in (
        ("unix:run/milter.sock", "must be absolute"),
        ("unix:/" + "d" * 120, "too long"),
        ("localhost", "host:port"),
    ):
        cfg.write_text(f'[milter]\nlisten = "{bad}"\n')
        with pytest.raises(ConfigError, match=why):
            load_config(cfg)
