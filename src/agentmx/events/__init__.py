"""The event system: catalogue, webhook delivery, live WebSocket fan-out."""
