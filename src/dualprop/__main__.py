"""``python -m dualprop``: the command line."""

from dualprop.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
