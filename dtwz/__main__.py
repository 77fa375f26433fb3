"""``python -m dtwz``: the ``dtwz`` command line (what ``dtwz cluster up`` runs nodes with)."""

from dtwz.cli import main

if __name__ == "__main__":
    main()
