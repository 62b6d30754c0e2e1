//! The ketama continuum, exactly as twemproxy builds it (float32 point counts, md5 of `name-i`).
