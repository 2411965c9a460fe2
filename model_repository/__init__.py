"""Committed sources of the model repository: config templates and the Python-backend model.py files."""
