"""ebpflb: an eBPF load balancer for Kubernetes Services (a kube-proxy replacement).

Pipeline: sources -> model -> plan -> apply -> BPF maps read by the programs in bpf/.
"""
__version__ = "0.1.0"
