"""HTTP routers: thin, they parse, authorise and hand over to the services."""
