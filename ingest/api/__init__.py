"""The ACRCloud Console API v2 over HTTP: the client, its typed errors and the response schemas.

Depends on nothing else of ours but the settings; knows nothing of Celery or the tables.
"""
