"""The operator's status page: what it shows (`overview`) and the page itself (`static/`)."""
