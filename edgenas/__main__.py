"""``python -m edgenas``: the command line."""

from edgenas.cli import main

if __name__ == "__main__":
    main()
