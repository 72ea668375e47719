"""The ``safehold`` command: thin click commands over the operations layer."""
