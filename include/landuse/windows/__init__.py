"""Sliding-window scoring of large rasters: the MXNet / R Server sibling, done right.

``grid`` (windows and equal-work strips with the right overlap), ``source`` (strip reads of
GeoTIFFs or plain images), ``extract`` (vectorised window extraction, resizing and scoring
of a strip through any bundle), ``fcn`` (the fully convolutional route, so that
overlapping windows share their convolutions, where that is exact: choosing it, and
scoring strips through it), ``fcn_model`` (a bundle's fully convolutional model, derived,
checked and kept), ``fcn_convert`` (the ONNX graph surgery behind it), ``nms`` (detections
with merging NMS), ``outputs`` (dense probability COG, class map, Parquet and GeoJSON
detections), ``spark`` (one Spark task per strip), ``job``
(:func:`~landuse.windows.job.run_windows`, end to end) and ``cli`` (``landuse windows``).
"""
