//! The reference media edge (being written).
