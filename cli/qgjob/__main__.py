"""`python -m qgjob` is the same as the `qgjob` command."""

from qgjob.cli import main

if __name__ == "__main__":
    main()
