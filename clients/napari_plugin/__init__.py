"""voxloc's napari plugin (npe2 manifest ``napari.yaml``; ``pip install "voxloc[napari]"``).

* :mod:`.reader`: opens voxloc's localization tables (ThunderSTORM CSV, Picasso HDF5) as
  a 3D Points layer in nm, coloured by z, with the table's columns as features.
* :mod:`.live`: a dock widget that follows a running service's localization stream and
  sets its threshold and model over the REST API.

Neither imports torch; napari itself is imported only by the widget.
"""
