"""Mixed data: tabular columns plus photos, for regression (house and listing prices).

Modules: ``columns`` (the tabular datasets, their columns and split manifest), ``airbnb``
(Inside Airbnb listings and photo download), ``preprocessing`` (the scikit-learn pipeline),
``photos`` (decode once, cache), ``models`` (MLP, CNN, transfer, fusion), ``metrics``
(regression metrics with bootstrap intervals), ``training`` (fit, baselines, run folder) and
``plots``.
"""
