"""Backup, restore and their kin as plain functions over sources, storage and the catalog."""
