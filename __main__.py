"""`python -m headstart` runs the command line (also what `torchrun -m headstart` starts)."""

from headstart.cli import main

if __name__ == "__main__":
    main()
