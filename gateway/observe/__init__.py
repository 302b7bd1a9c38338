"""What the gateway tells monitoring: one record per request, handed to observers (access log, metrics)."""
