"""The ``proximity`` command (:mod:`cli.main`) and its demo (:mod:`cli.demo`), on top of
everything: ``python -m cli`` runs it too."""
