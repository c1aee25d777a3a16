"""Sources of the Python-backend ``model.py`` files copied into built model repositories."""
