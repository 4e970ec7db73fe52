"""``memrope serve``: a local web app to start, watch and steer live streams (``app``), the live
stream behind each (``live``), the chunk-as-MP4 encoding the browser plays (``fmp4``) and the
checked messages a client may send (``protocol``)."""
