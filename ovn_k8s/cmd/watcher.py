"""`ovn-k8s-watcher`."""

from ovn_k8s.cmd import not_implemented


def main() -> None:
    not_implemented("ovn-k8s-watcher", 5)
