"""stages: the concrete stages of the image/data pipeline, each a plain function first.

Nothing registers itself on import: ``stages.registry`` is the explicit map from command and
stage names to factories, and the only module the engine's CLI imports.
"""
