"""The ``celltype`` command line: one entry point whose subcommands come from the packages."""
