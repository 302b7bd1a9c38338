"""Backups of the embedded (SQLite) database: snapshot, encrypted archive, verify, restore, copies, sets.

One job per module: ``snapshot`` copies the live database consistently, ``manifest`` is the signed
description of a backup, ``archive`` encrypts the parts and writes the backup directory, ``verify``
checks a backup end to end, ``restore`` puts one into a new data directory, ``targets`` replicates a
finished backup, ``sets`` lists backups and prunes them. The keyring is never part of a backup: it is
what decrypts one, so it is kept (and backed up) separately.
"""
