"""Chart tests; a package so `pod_security` is importable by other test folders (pytest puts tests/ on sys.path)."""
