"""stages: the concrete stages of the image/data pipeline, each a plain function first.

Nothing registers itself on import. The ``process`` command that assembles these stages lives
in the application layer (``app.process``); this package never imports ``app``.
"""
