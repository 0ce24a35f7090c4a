"""Background work a request starts and does not wait for: model downloads (``downloads``)."""
