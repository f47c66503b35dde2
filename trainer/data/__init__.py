"""The dataset layer: sources behind one interface -> a validated manifest -> splits -> a torch dataset.

A source (``CheXpertSource``, ``NIHSource``, later the radiologists' feedback store) only turns its own files
into ``Example`` rows; label policies, validation, splits and image loading are shared and never know which
source a row came from, so a new source plugs in without touching the training loop.
"""
