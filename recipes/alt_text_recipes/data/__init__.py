"""Captioned photos in, checked examples out: errors, paths, the logger, safe image opening, the data layouts,
loading and splits, the checks of every example, the fast input pipeline and streaming. Imports no other
subpackage."""
