"""What batch, speed and serving share: the event schema, the event log, configuration.

Nothing here imports a layer; the layers import this.
"""
