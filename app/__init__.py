"""app: the application on top of the stages — the command line, its options, the ``process`` and
``profile`` commands that assemble stages into a pipeline, their end-of-run tables and report.

Three layers, imports pointing one way only (import-linter contracts in ``pyproject.toml``)::

    app        the command line and what only the commands use      (this package)
     │
     ▼
    stages     the concrete stages: plain functions, stage factories (``stages/``)
     │
     ▼
    pipeline   the engine: stages, channels, runner, ledger, backends (``pipeline/``)

``python -m pipeline`` and the ``pixpipe`` script reach this package through
``pipeline/__main__.py``, the one engine module allowed to import it.

Modules, each with one owner:

* :mod:`app.cli` — the argument parser and ``main()``: exit codes, logging.
* :mod:`app.commands` — the ``process``, ``profile`` and ``demo`` commands.
* :mod:`app.warmup` — the workers' forkserver started before the heavy imports.
* :mod:`app.config` — :class:`~app.config.ProcessConfig`: every option of ``process``, each
  declared once (name, type, default, help, unit, group).
* :mod:`app.options` — what is derived from those declarations: the flags, the config-file keys
  and the checks; :mod:`app.readme` — the README's option table.
* :mod:`app.process` — the ``process`` pipeline: assembly (:func:`~app.process.build_pipeline`)
  and a whole run (:func:`~app.process.run_process`).
* :mod:`app.collectors` — end-of-run tables of the command (``stats.csv``, near duplicates,
  data aggregates, ``data_stats.csv``).
* :mod:`app.report` — ``report.html``.
* :mod:`app.endofrun` — the one feed of the folder's records (while the run goes), which feeds
  the tables and the report; :mod:`app.tables` — tables written as their rows stream.
* :mod:`app.console` — what the command prints (the only module here that prints).
* :mod:`app.demo`, :mod:`app.demo_download` — the engine demo and ``make demo-download``.
"""
