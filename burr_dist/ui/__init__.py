"""The Burr UI on a fleet (issue 11): view.py (pure) and backend.py (needs the ui extra)."""
