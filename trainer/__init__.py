"""Trainer and model lifecycle: data sources, Ray Train loop, MLflow tracking and registry, gate, promotion.

One module per pipeline stage: ``data`` (sources, label policies, splits, torch dataset) -> ``models`` ->
``loop`` (what each Ray worker runs) -> ``train`` (the driver) -> ``tracking`` / ``export_model`` ->
``evaluate`` -> ``gate`` -> ``promote`` (registry aliases and the serving seam in ``serving``).
"""
