"""Settings: command-line flags, then the config file, then Open_vSwitch external_ids.

The lineage kept node settings in ``Open_vSwitch . external_ids`` (``ovn-nb``,
``k8s-api-server``, ...); operators still set them with ``ovs-vsctl set``, so they
remain the last fallback. ``/etc/openvswitch/ovn_k8s.conf`` is an INI file with a
``[default]`` section whose keys are the long flag names with ``_`` for ``-``.
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CONFIG_FILE = Path("/etc/openvswitch/ovn_k8s.conf")

DEFAULTS: dict[str, str] = {
    "mtu": "1400",
    "cni_conf_dir": "/etc/cni/net.d",
    "cni_bin_dir": "/opt/cni/bin",
    "cni_front": "auto",
    "join_subnet": "100.64.0.0/16",
    "host_prefix": "24",
}

# Config keys that fall back to an Open_vSwitch external_ids key, as in the lineage.
EXTERNAL_IDS: dict[str, str] = {
    "nb": "ovn-nb",
    "sb": "ovn-remote",
    "k8s_api_server": "k8s-api-server",
    "k8s_api_token": "k8s-api-token",
    "k8s_ca_certificate": "k8s-ca-certificate",
}


class ConfigError(ValueError):
    """A setting is missing, malformed or contradictory."""


def read_config_file(path: Path | None) -> dict[str, str]:
    """The ``[default]`` section of the config file.

    An explicitly given file must exist; the default one may be absent.
    """
    explicit = path is not None
    path = path or DEFAULT_CONFIG_FILE
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} does not exist")
        return {}
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error as e:
        raise ConfigError(f"config file {path}: {e}") from None
    return dict(parser["default"]) if parser.has_section("default") else {}


@dataclass
class Settings:
    """Resolves one setting at a time through flags > file > external_ids > default."""

    flags: Mapping[str, object]
    file: Mapping[str, str] = field(default_factory=dict)
    external_ids: Mapping[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        value = self.flags.get(key)
        if value is not None:
            return str(value)
        if key in self.file:
            return self.file[key]
        ext = EXTERNAL_IDS.get(key)
        if ext and ext in self.external_ids:
            return self.external_ids[ext]
        return DEFAULTS.get(key)

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None or not value.strip():
            flag = "--" + key.replace("_", "-")
            ext = EXTERNAL_IDS.get(key)
            hint = f" or `ovs-vsctl set Open_vSwitch . external_ids:{ext}=...`" if ext else ""
            raise ConfigError(f"{flag} is required (or `{key}` in the config file{hint})")
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        text = self.require(key)
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"--{key.replace('_', '-')}: {text!r} is not a number") from None
        if not low <= value <= high:
            raise ConfigError(f"--{key.replace('_', '-')}: {value} is not in {low}..{high}")
        return value
