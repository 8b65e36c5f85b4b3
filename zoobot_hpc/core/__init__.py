"""The torch-free core: config, run-directory layout, atomic writes, redaction, label schemas, model kinds."""
