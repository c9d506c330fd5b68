import pytest

from ovn_k8s import config


def test_precedence_flags_then_file_then_external_ids(tmp_path):
    conf = tmp_path / "ovn_k8s.conf"
    conf.write_text("[default]\nmtu = 1300\nnb = tcp:10.0.0.2:6641\n")
    ext = {"ovn-nb": "tcp:10.0.0.3:6641", "k8s-api-server": "10.0.0.1:8080"}
    s = config.Settings({"mtu": None, "nb": None}, config.read_config_file(conf), ext)
    assert s.get("mtu") == "1300"
    assert s.get("nb") == "tcp:10.0.0.2:6641"
    assert s.get("k8s_api_server") == "10.0.0.1:8080"
    s.flags = {"nb": "unix:/x.sock"}
    assert s.get("nb") == "unix:/x.sock"
    assert config.Settings({}, {}, {}).get("mtu") == "1400"


def test_missing_required_setting_names_every_source():
    with pytest.raises(config.ConfigError, match=r"--nb is required .*external_ids:ovn-nb"):
        config.Settings({}, {}, {}).require("nb")


def test_explicit_config_file_must_exist(tmp_path):
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.read_config_file(tmp_path / "nope.conf")


def test_bad_config_file_is_an_error(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("mtu = 1\n")
    with pytest.raises(config.ConfigError, match=r"bad\.conf"):
        config.read_config_file(conf)


@pytest.mark.parametrize(("value", "message"), [("abc", "not a number"), ("70000", "not in")])
def test_integer_checks(value, message):
    with pytest.raises(config.ConfigError, match=message):
        config.Settings({"mtu": value}).integer("mtu", 576, 65535)
