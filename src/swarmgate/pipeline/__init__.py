"""The request path: one record per request (``exchange``) through explicit stages."""
