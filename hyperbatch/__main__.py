"""``python -m hyperbatch``: the same command line as the ``hyperbatch`` console script."""

from hyperbatch.cli import main

if __name__ == "__main__":
    main(prog_name="hyperbatch")
