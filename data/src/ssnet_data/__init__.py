"""The data side of ssnet-server: what images and batches are and how they travel.

``ndarray`` (the array codec on the wire), ``imagemeta`` (LArCV1's ImageMeta), ``larcv1msg`` (image messages),
``batchmsg`` (training batch messages, sharding), ``larcv1`` (LArCV1 ROOT files: the reader needs uproot, the
writer ROOT's Python bindings), ``preprocess`` (the pixel preprocessing), ``services`` (sub-service names).
numpy is its one hard dependency; the broker, which never looks into payloads, does not install it.
"""

__version__ = "0.1.0"
