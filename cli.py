"""The design card's entry point: ``python cli.py ...`` runs the ``capo`` command. The commands
live in ``capo.cli`` (installed as the ``capo`` script); this file only calls them."""

from capo.cli import main

if __name__ == "__main__":
    main()
