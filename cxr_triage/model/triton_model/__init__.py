"""Template of the Triton Python-backend model; ``model.py`` is copied into each model version folder."""
