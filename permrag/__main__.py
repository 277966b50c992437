"""``python -m permrag`` runs the CLI, as the ``permrag`` command does."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="permrag")
