"""`python -m ebpflb.cli`: the same command line as the `ebpflb` console script."""
from . import main

if __name__ == "__main__":
    main()
