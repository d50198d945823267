"""rlhfkit.app: the labelling web app (FastAPI + SQLite). Never imports torch; see docs/labelling.md."""
