"""``python -m dsguard`` runs the CLI."""

from dsguard.cli.app import main

main()
