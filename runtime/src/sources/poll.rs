//! HTTP polling (being written).
