"""The Flower ClientApp: a thin adapter from Flower messages to :mod:`agent.site_service`."""
