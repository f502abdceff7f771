"""The data-percentage scaling study (`cion-ray scale`, jobs/scaling.py)."""
