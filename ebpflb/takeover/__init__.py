"""Taking a node over from kube-proxy, and handing it back."""
