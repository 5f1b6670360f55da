"""The foundation: formats, schemas, the dataset root, atomic I/O and errors. Imports nothing else of the project."""
