"""The Burr UI on a fleet: view.py (pure) and backend.py (needs the ui extra)."""
