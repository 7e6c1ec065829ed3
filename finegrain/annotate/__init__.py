"""The feedback-collection app: a small FastAPI server, its SQL store and its command line.

Importing this package is cheap: the web and database libraries are imported by the modules
that need them (`server`, `db`, `store`), never here, so `finegrain --help` stays instant.
"""
