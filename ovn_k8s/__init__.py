"""ovn-k8s: connect Kubernetes to OVN and Open vSwitch."""
