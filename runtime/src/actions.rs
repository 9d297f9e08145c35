//! Actions (being written).
